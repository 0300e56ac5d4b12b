"""The updater's own versioned slots: ``<prefix>/versions/<version>/`` and the links.

``systemd/install.sh`` lays them out; a self-update (a package carrying an updater bundle)
adds a slot, points ``<prefix>/current`` at it and restarts the unit; the guard
(``systemd/updater-guard.sh``) points it back when the new updater does not start. This
module knows the layout and the running updater's version.
"""

from __future__ import annotations

import importlib.metadata

#: The distribution name the updater is installed as (its wheel, its bundle).
DISTRIBUTION = "tope-updater"


def running_version() -> str:
    """The version of the updater this process runs (its installed distribution's)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
