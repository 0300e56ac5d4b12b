"""Where the updater keeps its files under the state directory.

One place for the names of a download (the finished package and its ``.part``), shared by
the downloader (:mod:`updater_fsm.ops.download`) and restart recovery
(:mod:`updater_fsm.recovery`), which measures what a killed download left; and
:func:`links_where_files_belong`, the ``verify-setup`` check that nothing the updater
writes there is a symlink (it never follows one: the lock, the log, the journal).
"""

from __future__ import annotations

from pathlib import Path


def part_path(downloads_dir: Path, package_name: str) -> Path:
    """Where a download in progress lives: ``<downloads_dir>/<package_name>.part``."""
    return downloads_dir / f"{package_name}.part"


def package_path(downloads_dir: Path, package_name: str) -> Path:
    """Where a finished download lives: ``<downloads_dir>/<package_name>``."""
    return downloads_dir / package_name


#: Directories of the state directory whose entries the updater writes (``backups/`` keeps
#: copies of external files, which may be links themselves, and is not listed).
_WRITTEN_DIRS = ("", "logs", "downloads", "fleet")


def links_where_files_belong(state_dir: Path) -> list[str]:
    """One problem per symlink among the files the updater writes in ``state_dir``
    (and per symlinked directory of :data:`_WRITTEN_DIRS`)."""
    problems = []
    for name in _WRITTEN_DIRS:
        directory = state_dir / name if name else state_dir
        if name and directory.is_symlink():
            problems.append(f"{directory} is a symbolic link: the updater never follows one")
            continue
        try:
            entries = sorted(directory.iterdir())
        except OSError:
            continue
        problems += [
            f"{entry} is a symbolic link where the updater writes a file: remove it"
            for entry in entries
            if entry.is_symlink() and (name or entry.name not in _WRITTEN_DIRS)
        ]
    return problems
