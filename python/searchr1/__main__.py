"""``python -m searchr1``: the same as the ``searchr1`` command."""

from searchr1.cli import main

main()
