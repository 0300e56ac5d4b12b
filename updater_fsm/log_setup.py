"""Logging: JSON lines to a rotating file, readable lines on the console (contract §6).

structlog renders every event twice through the standard library's handlers: as one JSON
object per line (ISO 8601 UTC timestamps) into ``<state_dir>/logs/updater.log``, rotated at
10 MB keeping 3 old files, and with colours on a TTY console. Library loggers (aiohttp)
flow through the same handlers. URL credentials are masked in every line
(:func:`redact_credentials`).
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import sys
from pathlib import Path

import structlog

from updater_fsm.core.urls import redact_url
from updater_fsm.durable import open_state_file

LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 3

_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


def redact_credentials(
    logger: object, method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """Processor: no URL credentials (``user:secret@``) in any string of a log line.

    Runs last before rendering, after exceptions were formatted, for structlog and
    standard-library records alike: the log file is readable by other users.
    """
    for key, value in event_dict.items():
        if isinstance(value, str) and "@" in value:
            event_dict[key] = redact_url(value)
    return event_dict


#: The log's permission bits: the updater (root) writes it, its group (adm) reads it, no
#: one else (it names URLs, versions and units).
LOG_FILE_MODE = 0o640


class _NoFollowRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """The rotating log, opened without following a link and with mode 0640.

    A symlink (or a FIFO) planted at ``updater.log`` is refused with
    :class:`~updater_fsm.durable.StateFileRefused` instead of appending the log to whatever
    it names; an existing file's mode is tightened to :data:`LOG_FILE_MODE`.
    """

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        fd = open_state_file(Path(self.baseFilename), flags, LOG_FILE_MODE)
        try:
            os.fchmod(fd, LOG_FILE_MODE)
            return open(fd, "a", encoding=self.encoding, errors=self.errors)
        except BaseException:
            os.close(fd)
            raise


def configure_logging(logs_dir: Path | None, *, level: str = "info", console: bool = True) -> None:
    """Route structlog and stdlib logging to the rotating JSON file and/or the console.

    Args:
        logs_dir: directory of ``updater.log``; None = no file (e.g. short CLI commands).
        level: minimum level name.
        console: also log to stderr (coloured key=value on a TTY, JSON otherwise).
    """
    handlers: list[logging.Handler] = []
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        file_handler = _NoFollowRotatingFileHandler(
            logs_dir / "updater.log",
            maxBytes=LOG_FILE_BYTES,
            backupCount=LOG_FILE_BACKUPS,
            encoding="utf-8",
        )
        file_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=_SHARED,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    redact_credentials,
                    structlog.processors.JSONRenderer(sort_keys=False),
                ],
            )
        )
        handlers.append(file_handler)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        renderer: structlog.types.Processor = (
            structlog.dev.ConsoleRenderer(colors=True)
            if sys.stderr.isatty()
            else structlog.processors.JSONRenderer()
        )
        stream.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=_SHARED,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    redact_credentials,
                    renderer,
                ],
            )
        )
        handlers.append(stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)  # logs every callback at INFO
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
