"""The updater as a running service (``tope-updater serve``).

:mod:`~http_shell.daemon.assembly` is the composition root: the single-instance lock,
recovery, engine, runner, reporter, fleet poller and HTTP API, started in order and
stopped on SIGTERM. :mod:`~http_shell.daemon.reporter` carries the device-api reports out
(the policy is :class:`~updater_fsm.control.ReportOutbox`); :mod:`~http_shell.daemon.sd_notify`
speaks systemd's notification protocol (readiness, stopping, watchdog).
"""
