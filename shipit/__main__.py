"""`python -m shipit`: the same entry point as the console script (hosts use it via shipit_command)."""

from shipit.main import main

main()
