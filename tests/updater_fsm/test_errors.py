"""The one errno → error-code rule every executor uses."""

from __future__ import annotations

import errno

import pytest

from updater_fsm.core.errors import ErrorCode, code_for_os_error


@pytest.mark.parametrize(
    ("errno_value", "otherwise", "expected"),
    [
        (errno.ENOSPC, ErrorCode.DEPLOYMENT_FAILED, ErrorCode.DISK_FULL),
        (errno.EDQUOT, ErrorCode.DEPLOYMENT_FAILED, ErrorCode.DISK_FULL),
        (errno.EDQUOT, ErrorCode.DOWNLOAD_FAILED, ErrorCode.DISK_FULL),
        (errno.EACCES, ErrorCode.DEPLOYMENT_FAILED, ErrorCode.DEPLOYMENT_FAILED),
        (errno.EIO, ErrorCode.DOWNLOAD_FAILED, ErrorCode.DOWNLOAD_FAILED),
        (None, ErrorCode.UPDATER_INSTALL_FAILED, ErrorCode.UPDATER_INSTALL_FAILED),
    ],
)
def test_code_for_os_error(
    errno_value: int | None, otherwise: ErrorCode, expected: ErrorCode
) -> None:
    assert code_for_os_error(errno_value, otherwise) is expected
