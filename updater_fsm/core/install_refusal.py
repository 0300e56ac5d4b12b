"""Which versions a device refuses to install over what it runs: one pure rule.

Staging a snapshot asks :func:`refuse_install` before anything is touched. The rules, in
the order they are asked (the first that applies is the answer):

1. the running version (``current``) is not installed again: ``DEPLOYMENT_FAILED``;
2. with ``allow_downgrade`` off, a version older than the running one:
   ``DOWNGRADE_REFUSED``;
3. with ``allow_downgrade`` off, a version below the rollback floor — the highest version
   this device has run successfully, whatever runs now (a manual rollback to ``previous``
   or ``factory`` does not lower it) — : ``DOWNGRADE_REFUSED``. Without it, an old signed
   release could be replayed after a factory rollback (Android's rollback index, TUF's
   rollback protection);
4. the factory version is never installed over (its snapshot is never modified; roll back
   to it instead): ``DEPLOYMENT_FAILED``.

A link that is missing (None) takes no part: without ``current`` neither 1 nor 2 applies
(staging then has nothing to copy from, and says so itself), without ``factory`` not 3.
Re-installing any other existing version (``previous``, say) is allowed: it replaces that
snapshot.
"""

from __future__ import annotations

from updater_fsm.core.errors import ErrorCode, Failure
from updater_fsm.core.events import LinkVersions
from updater_fsm.core.versions import Version


def refuse_install(
    version: str, links: LinkVersions, allow_downgrade: bool, floor: str | None = None
) -> Failure | None:
    """Why ``version`` must not be installed given the ``links``, or None when it may be.

    Args:
        version: the package's version (a valid ``Version``).
        links: what ``current``, ``previous`` and ``factory`` name now.
        allow_downgrade: False = refuse a version older than the running one, or than the
            ``floor``.
        floor: the rollback floor (None: none recorded yet).

    Raises:
        InvalidVersion: ``version`` or ``links.current`` is not a valid version.
    """
    if version == links.current:
        return Failure(ErrorCode.DEPLOYMENT_FAILED, f"v{version} is already the running version")
    if (
        not allow_downgrade
        and links.current is not None
        and Version.parse(version).is_older_than(Version.parse(links.current))
    ):
        return Failure(
            ErrorCode.DOWNGRADE_REFUSED,
            f"v{version} is older than the running v{links.current} (allow_downgrade is off)",
        )
    if (
        not allow_downgrade
        and floor is not None
        and Version.parse(version).is_older_than(Version.parse(floor))
    ):
        return Failure(
            ErrorCode.DOWNGRADE_REFUSED,
            f"{version} is below {floor}, the highest version this device has run",
        )
    if version == links.factory:
        return Failure(
            ErrorCode.DEPLOYMENT_FAILED,
            f"v{version} is the factory snapshot, which is never modified"
            " (roll back to factory instead)",
        )
    return None
