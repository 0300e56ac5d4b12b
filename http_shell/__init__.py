"""The updater's outside: the aiohttp HTTP API and the device-api reporter.

:func:`http_shell.api.app.create_app` builds the API around an
:class:`~updater_fsm.engine.Engine`; :class:`http_shell.daemon.reporter.Reporter` pushes progress
to device-api. Both only translate between the world and the engine; decisions live in
:mod:`updater_fsm`.
"""
