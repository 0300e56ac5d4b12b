"""Which device models a package may be installed on: one pure rule.

A printer maker ships several models from one update server; a package built for one
model must not reach another (RAUC's ``compatible``, SWUpdate's ``hardware-compatibility``,
Mender's ``device_type``). The device names its model in the ``compatible`` setting, the
package in its manifest's ``compatible`` key (``package build --compatible NAME``; the
package's signature covers the manifest, so the name cannot be changed afterwards):

* the device names none: every package is accepted (as before the key existed);
* the device names one: a package naming another is refused; a package naming none is
  refused too, unless ``allow_incompatible`` (a migration aid while old packages without
  the key are still in use);
* equal names are accepted.

Asked when the package is verified, before "ready to install" and before anything is
stopped: ``INCOMPATIBLE_DEVICE``.
"""

from __future__ import annotations

from updater_fsm.core.errors import ErrorCode, Failure


def refuse_incompatible(
    package: str | None, device: str | None, allow_incompatible: bool
) -> Failure | None:
    """Why a package for ``package`` must not be installed on ``device``, or None."""
    if device is None or package == device:
        return None
    if package is None:
        if allow_incompatible:
            return None
        return Failure(
            ErrorCode.INCOMPATIBLE_DEVICE,
            f"package names no device model, this device is {device}"
            " (build it with --compatible, or set allow_incompatible)",
        )
    return Failure(
        ErrorCode.INCOMPATIBLE_DEVICE, f"package is for {package}, this device is {device}"
    )
