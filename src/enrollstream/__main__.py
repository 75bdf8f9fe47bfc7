"""`python -m enrollstream ...` is the `enrollstream` command."""

from enrollstream.cli import main

main()
