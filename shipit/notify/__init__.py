"""Notifications: a subscriber of the deploy's event stream that tells people (chat, ntfy,
webhooks) about deploys, the job gate and the jobs a deploy stopped and restarted.

    notifier = Notifier(targets_for(config, "prod"), secrets=values, source={...}).attach(bus)
    ...  # the deploy emits events
    notifier.close(10)  # bounded flush at the end

See docs/notifications.md.
"""

from shipit.notify.notifier import Notifier
from shipit.notify.targets import DEFAULT_EVENTS, origin_for, targets_for, wants

__all__ = ["DEFAULT_EVENTS", "Notifier", "origin_for", "targets_for", "wants"]
