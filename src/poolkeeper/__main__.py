"""``python -m poolkeeper``: the same as the ``poolkeeper`` command."""

from poolkeeper.cli import main

raise SystemExit(main())
