"""The HTTP API (``/api/v1.0``, contract §1 and its extensions), built with aiohttp.

:mod:`~http_shell.api.app` builds the application (middlewares: error envelope, auth,
edge guards); :mod:`~http_shell.api.routes` holds the handlers, :mod:`~http_shell.api.bodies`
the strict request models and the envelope, :mod:`~http_shell.api.events` the SSE stream,
:mod:`~http_shell.api.guard` the Host/Origin and content-type checks, and
:mod:`~http_shell.api.openapi` the OpenAPI document. Handlers only translate between HTTP
and :mod:`updater_fsm.control`.
"""
