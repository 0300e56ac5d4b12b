"""``tope-updater``: the command line, one module per command or family of commands.

Each command module holds its argparse parser (``add_parsers``) beside its handler;
:mod:`~http_shell.cli.main` assembles them and is the console script's entry point
(``python -m http_shell.cli`` runs it too).

* :mod:`~http_shell.cli.serve` — ``serve`` (the daemon, optionally on a local sandbox);
* :mod:`~http_shell.cli.layout` — ``init`` and ``verify-setup`` (the install root's layout);
* :mod:`~http_shell.cli.statechart` — ``statechart``;
* :mod:`~http_shell.cli.package` — ``package build`` and ``package keygen``;
* :mod:`~http_shell.cli.jobs` — ``download``, ``update``, ``progress``, ``versions``,
  ``rollback``, ``cancel``, ``reset``: clients of a running updater, through
  :mod:`~http_shell.cli.client` (the HTTP API client and the progress bar);
* :mod:`~http_shell.cli.screen` — ``screen`` (the progress display, :mod:`screen`);
* :mod:`~http_shell.cli.demo` — ``demo``, which runs :mod:`~http_shell.cli.demo_cycle`.

:mod:`~http_shell.cli.options` holds the flags several commands share,
:mod:`~http_shell.cli.exit_codes` the exit statuses.

Importing the command modules must stay cheap: ``tope-updater screen`` runs beside the
updater on a small device, so the engine, the logging setup, aiohttp and asyncio (which
loads ``ssl``) are imported inside the handlers that need them (docs/PERFORMANCE.md).
"""
