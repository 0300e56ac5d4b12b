"""Stable error codes (contract §5) and the exception that carries them.

Every failure the updater reports starts with one of these codes, so device-api and the
GUI can match on the prefix while a human reads the detail that follows it.
"""

from __future__ import annotations

import enum
import errno

import attrs

from updater_fsm.core.outside_text import visible


class ErrorCode(enum.StrEnum):
    """The application error codes of contract §5 (plus extensions, never removals)."""

    DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
    INCOMPLETE_DOWNLOAD = "INCOMPLETE_DOWNLOAD"
    PACKAGE_SIZE_MISMATCH = "PACKAGE_SIZE_MISMATCH"
    MD5_MISMATCH = "MD5_MISMATCH"
    SHA256_MISMATCH = "SHA256_MISMATCH"
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    SIGNATURE_REQUIRED = "SIGNATURE_REQUIRED"
    DISK_FULL = "DISK_FULL"
    PACKAGE_EXPIRED = "PACKAGE_EXPIRED"
    INVALID_MANIFEST = "INVALID_MANIFEST"
    VERSION_MISMATCH = "VERSION_MISMATCH"
    DOWNGRADE_REFUSED = "DOWNGRADE_REFUSED"
    DELTA_BASE_MISMATCH = "DELTA_BASE_MISMATCH"
    SERVICE_STOP_FAILED = "SERVICE_STOP_FAILED"
    SERVICE_STOP_TIMEOUT = "SERVICE_STOP_TIMEOUT"
    SERVICE_START_FAILED = "SERVICE_START_FAILED"
    POST_CMD_FAILED = "POST_CMD_FAILED"
    HEALTH_CHECK_FAILED = "HEALTH_CHECK_FAILED"
    DEPLOYMENT_FAILED = "DEPLOYMENT_FAILED"
    ROLLBACK_LEVEL_1_SUCCESS = "ROLLBACK_LEVEL_1_SUCCESS"
    ROLLBACK_LEVEL_2_SUCCESS = "ROLLBACK_LEVEL_2_SUCCESS"
    ROLLBACK_FAILED = "ROLLBACK_FAILED"
    CANCELLED = "CANCELLED"
    RESUME_LIMIT = "RESUME_LIMIT"
    PRINTER_BUSY = "PRINTER_BUSY"
    #: The package's updater bundle is for another architecture (refused before staging).
    UPDATER_ARCH_MISMATCH = "UPDATER_ARCH_MISMATCH"
    #: The package carries an updater but this one does not run from a slot
    #: (``<prefix>/versions/<version>``: install it with systemd/install.sh).
    UPDATER_NOT_SLOTTED = "UPDATER_NOT_SLOTTED"
    #: The new updater's slot could not be built (the device's own install stands).
    UPDATER_INSTALL_FAILED = "UPDATER_INSTALL_FAILED"
    #: The new updater did not prove itself; the guard put the old one back.
    UPDATER_ROLLBACK = "UPDATER_ROLLBACK"
    #: The package is built for another device model (``compatible``), refused at verify.
    INCOMPATIBLE_DEVICE = "INCOMPATIBLE_DEVICE"
    FORBIDDEN = "FORBIDDEN"
    TOO_MANY_CLIENTS = "TOO_MANY_CLIENTS"


class RequestError(enum.StrEnum):
    """Why a request was refused: the prefix of an API answer's ``msg`` (not a job's error).

    A job's outcome carries an :class:`ErrorCode`; these answer the request itself
    (docs/ERRORS.md, "API-level messages").
    """

    VALIDATION_ERROR = "VALIDATION_ERROR"
    PACKAGE_NOT_FOUND = "PACKAGE_NOT_FOUND"
    VERSION_NOT_FOUND = "VERSION_NOT_FOUND"
    OPERATION_IN_PROGRESS = "OPERATION_IN_PROGRESS"
    NOTHING_TO_CANCEL = "NOTHING_TO_CANCEL"
    UNAUTHORIZED = "UNAUTHORIZED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    JOURNAL_WRITE_FAILED = "JOURNAL_WRITE_FAILED"
    IGNORED = "IGNORED"


@attrs.frozen
class Failure:
    """A failure as the machine sees it: a stable code to decide on, a detail for people.

    ``str(failure)`` is the contract's ``error`` string, ``"<CODE>: <detail>"``; the
    machine decides on ``code`` and never parses that string back.
    """

    code: ErrorCode
    #: for people; text from outside (a probe's output, a server's answer) is made
    #: :func:`~updater_fsm.core.outside_text.visible` here, so every failure shown is safe
    detail: str = attrs.field(converter=visible)

    def __str__(self) -> str:
        return f"{self.code.value}: {self.detail}"


class UpdaterError(Exception):
    """A failure with a stable code and a human-readable detail.

    ``str(err)`` is the contract's ``error`` field: ``"<CODE>: <detail>"``.

    Args:
        code: one of :class:`ErrorCode`.
        detail: what went wrong, for a human (name the file, unit, URL or numbers involved).
        retryable: whether trying the same operation again may succeed (transient cause).
    """

    def __init__(self, code: ErrorCode, detail: str, *, retryable: bool = False) -> None:
        detail = visible(detail)
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail
        self.retryable = retryable

    @property
    def failure(self) -> Failure:
        """The same failure as a value the machine can carry."""
        return Failure(self.code, self.detail)

    @property
    def error(self) -> str:
        """The contract ``error`` string, ``"<CODE>: <detail>"``."""
        return f"{self.code.value}: {self.detail}"


#: ``errno`` values that mean the filesystem is out of room (space or the user's quota).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def code_for_os_error(errno_value: int | None, otherwise: ErrorCode) -> ErrorCode:
    """The error code of a failed file operation: ``DISK_FULL`` when the filesystem is out
    of room (ENOSPC, EDQUOT), else ``otherwise`` (the step's own code).

    Pure: callers pass ``OSError.errno``; every executor maps errors through this one rule.
    """
    return ErrorCode.DISK_FULL if errno_value in DISK_FULL_ERRNOS else otherwise


def error_for_os_error(exc: OSError, detail: str, otherwise: ErrorCode) -> UpdaterError:
    """A failed file operation as an :class:`UpdaterError` (code by :func:`code_for_os_error`).

    ``DISK_FULL`` (retryable, ``"<detail>: <strerror>"``) when the filesystem is out of room,
    else ``otherwise`` with ``"<detail>: <exc>"``.
    """
    if code_for_os_error(exc.errno, otherwise) is ErrorCode.DISK_FULL:
        return UpdaterError(ErrorCode.DISK_FULL, f"{detail}: {exc.strerror}", retryable=True)
    return UpdaterError(otherwise, f"{detail}: {exc}")
