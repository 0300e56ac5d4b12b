"""Where the updater keeps a download: the finished package and its ``.part``.

One place for the names, shared by the downloader (:mod:`updater_fsm.ops.download`) and
restart recovery (:mod:`updater_fsm.recovery`), which measures what a killed download left.
"""

from __future__ import annotations

from pathlib import Path


def part_path(downloads_dir: Path, package_name: str) -> Path:
    """Where a download in progress lives: ``<downloads_dir>/<package_name>.part``."""
    return downloads_dir / f"{package_name}.part"


def package_path(downloads_dir: Path, package_name: str) -> Path:
    """Where a finished download lives: ``<downloads_dir>/<package_name>``."""
    return downloads_dir / package_name
