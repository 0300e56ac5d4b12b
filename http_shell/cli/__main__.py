"""``python -m http_shell.cli``: the ``tope-updater`` command."""

from http_shell.cli.main import main

raise SystemExit(main())
