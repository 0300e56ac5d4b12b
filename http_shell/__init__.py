"""The updater's outside, by job; no business logic (decisions live in :mod:`updater_fsm`).

* :mod:`http_shell.api` — the aiohttp HTTP API (:func:`http_shell.api.app.create_app`):
  a source of commands that reaches the engine only through :mod:`updater_fsm.control`.
* :mod:`http_shell.daemon` — ``tope-updater serve`` as a running service: the composition
  root (:mod:`http_shell.daemon.assembly`: lock, recovery, engine, runner, reporter, fleet
  poller, HTTP API, SIGTERM), the device-api reporter
  (:class:`http_shell.daemon.reporter.Reporter`) and systemd's ``sd_notify``.
* :mod:`http_shell.cli` — the ``tope-updater`` command: one module per command or family
  of commands; the commands that drive a running updater are clients of the HTTP API.
"""
