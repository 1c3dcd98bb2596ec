"""Encryption at rest for saved job state (checkpoints) and the recorded env of runs.

Keys are Fernet keys (AES-128-CBC + HMAC-SHA256, from `cryptography`), newest first; several
keys make a MultiFernet, so state written under an older key still reads while a rotation is
under way. Every shipit process (deploy, host agent, `shipit job run`) finds them the same way:

  SHIPIT_STATE_KEYS      comma-separated keys, newest first (wins when set)
  SHIPIT_STATE_KEY_FILE  a file with one key per line (newest first, `#` comments), mode 0600

`jobs.key_file` in shipit.yaml is exported as SHIPIT_STATE_KEY_FILE by the commands that load a
stage (see `use_stage_keys`), so the local agent and the jobs it starts inherit it.

An encrypted value is stored as text starting with PREFIX, so rows written before a key existed
(plain JSON) still read. A value that cannot be decrypted raises StateKeyError (exit 5) and is
left exactly as it is: a later run with the right key reads it.

`cryptography` is imported only when a key is configured: `shipit job run` stays lean without.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Mapping

from shipit.errors import CorruptState

TYPE_CHECKING = False  # typing costs ~3 ms to import; annotations are strings (PEP 563)
if TYPE_CHECKING:
    from typing import Any

    from shipit.config.model import StageConfig

PREFIX = "shipit-enc:v1:"
ENV_KEYS = "SHIPIT_STATE_KEYS"
ENV_KEY_FILE = "SHIPIT_STATE_KEY_FILE"
HINT = f"set {ENV_KEYS} or jobs.key_file ({ENV_KEY_FILE})"


class StateKeyError(CorruptState):
    """No key, a wrong key or an unusable key file: stored state cannot be read or written."""

    exit_code = 5


def generate_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


def is_encrypted(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


class StateCipher:
    """Encrypts with the first key, decrypts with any of them."""

    def __init__(self, keys: list[str], *, source: str = ENV_KEYS) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        if not keys:
            raise StateKeyError(f"no job state key in {source}")
        fernets = []
        for i, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key.encode("ascii")))
            except (ValueError, UnicodeEncodeError):
                # Never echo the key itself: it is a secret even when malformed.
                raise StateKeyError(
                    f"job state key #{i} in {source} is not a Fernet key "
                    "(44 url-safe base64 characters; `shipit keys generate` makes one)"
                ) from None
        self._fernet = MultiFernet(fernets)
        self.source = source
        self.count = len(fernets)

    def encrypt(self, text: str) -> str:
        return PREFIX + self._fernet.encrypt(text.encode("utf-8")).decode("ascii")

    def decrypt(self, value: str, where: str) -> str:
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(value[len(PREFIX):].encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise StateKeyError(
                f"{where}: the saved state is encrypted with a key that is not among the "
                f"{self.count} configured in {self.source}; it was left untouched"
            ) from None

    def rotate(self, value: str, where: str) -> str:
        """The value under the newest key (plain text gets encrypted)."""
        if not is_encrypted(value):
            return self.encrypt(value)
        from cryptography.fernet import InvalidToken

        try:
            token = self._fernet.rotate(value[len(PREFIX):].encode("ascii"))
        except InvalidToken:
            self.decrypt(value, where)  # raises the StateKeyError naming the place
            raise
        return PREFIX + token.decode("ascii")


# -- keys from the environment ----------------------------------------------------------------------


def parse_keys(text: str) -> list[str]:
    keys: list[str] = []
    for line in text.replace(",", "\n").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            keys.append(line)
    return keys


def read_key_file(path: str) -> list[str]:
    """Keys from a file that only its owner can read (0600 or stricter)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise StateKeyError(f"job state key file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateKeyError(f"job state key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise StateKeyError(
                f"job state key file {path} is readable by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}"
            )
        with os.fdopen(os.dup(fd), encoding="utf-8") as f:
            keys = parse_keys(f.read())
    finally:
        os.close(fd)
    if not keys:
        raise StateKeyError(f"job state key file {path} holds no key")
    return keys


_cache: dict[tuple[Any, ...], StateCipher | None] = {}
_cache_mu = threading.Lock()


def cipher_from_env(environ: Mapping[str, str] | None = None) -> StateCipher | None:
    """The configured cipher, or None when no key is configured. Cached per key source (a key
    file is re-read when it changes)."""
    env = os.environ if environ is None else environ
    keys = env.get(ENV_KEYS, "").strip()
    path = env.get(ENV_KEY_FILE, "").strip()
    if not keys and not path:
        return None
    if keys:
        ident: tuple[Any, ...] = ("env", keys)
    else:
        try:
            st = os.stat(path)
            ident = ("file", path, st.st_mtime_ns, st.st_size, st.st_mode)
        except OSError:
            ident = ("file", path, None)
    with _cache_mu:
        if ident in _cache:
            return _cache[ident]
    if keys:
        cipher = StateCipher(parse_keys(keys), source=ENV_KEYS)
    else:
        cipher = StateCipher(read_key_file(path), source=f"key file {path}")
    with _cache_mu:
        _cache[ident] = cipher
    return cipher


def use_stage_keys(stage: StageConfig, environ: dict[str, str] | None = None) -> None:
    """Export a stage's `jobs.key_file` as SHIPIT_STATE_KEY_FILE, unless keys are already given
    in the environment (the environment wins: CI can inject keys without touching files)."""
    env = os.environ if environ is None else environ
    key_file = getattr(stage.jobs, "key_file", None)
    if key_file and not env.get(ENV_KEYS) and not env.get(ENV_KEY_FILE):
        env[ENV_KEY_FILE] = os.path.expanduser(key_file)


# -- sealing stored values --------------------------------------------------------------------------


def seal(text: str) -> str:
    """JSON text as stored: encrypted when a key is configured, as is otherwise."""
    cipher = cipher_from_env()
    return text if cipher is None else cipher.encrypt(text)


def unseal(value: str, where: str) -> str:
    """Stored text back to JSON text. Plain values (written before a key existed) pass through."""
    if not is_encrypted(value):
        return value
    cipher = cipher_from_env()
    if cipher is None:
        raise StateKeyError(f"{where}: the saved state is encrypted but no key is configured ({HINT})")
    return cipher.decrypt(value, where)
