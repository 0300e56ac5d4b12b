"""The installed snapshots and their sizes, for ``GET /versions``, at a bounded cost.

Measuring a snapshot walks its whole tree (30,000 files: about half a second of CPU), and
``/versions`` is a read anyone may repeat at any rate. Three rules keep it cheap:

* **Each snapshot is measured once.** A snapshot is complete and never modified once it
  is renamed into place (``versions/v<version>``; see :mod:`updater_fsm.ops.snapshot_store`),
  so its size is kept, in memory, under the identity of its directory: device, inode,
  mtime and ctime. A snapshot replaced (staged again under the same version: a new
  directory renamed in), removed, or changed at its top (an entry added or renamed, a
  chmod) has another identity and is measured again; the size of one no longer listed is
  forgotten. Nothing is stored on disk, so nothing can be stale after a crash: a restart
  measures each snapshot once more.
* **A walk runs on one thread of its own**, never in the default executor (which the
  journal's writes once shared, issue 21), and **once for all the readers that want it**:
  concurrent readers of a snapshot being measured await the same walk. A flood of reads
  costs one walk per snapshot and one thread, not a walk and a thread's memory per request.
* **A known size is answered on the event loop**, with one ``scandir`` of ``versions/``
  and one ``lstat`` per snapshot (what the engine's link reading already does there after
  every decision): no thread hand-over per read, so a flood of reads does not make every
  other thread — the journal's writer first — wait for the GIL at each of its system calls.

A change deep inside a snapshot by hand (a file edited under ``v1.1.0/lib/``) is not
seen until the snapshot's directory changes or the updater restarts; the store never
does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

from updater_fsm.ops.futures import mark_retrieved
from updater_fsm.ops.snapshot_store import Layout, snapshot_size, snapshot_version, version_key


@attrs.frozen
class Installed:
    """One complete snapshot: its version and apparent size in bytes (0: gone meanwhile)."""

    version: str
    size_bytes: int


#: What identifies one snapshot directory: (st_dev, st_ino, st_mtime_ns, st_ctime_ns).
_Identity = tuple[int, int, int, int]


@attrs.frozen
class _Known:
    identity: _Identity
    size: asyncio.Future[int]


class SnapshotSizes:
    """The snapshots under ``root`` with their sizes (see the module docstring).

    Use it from one event loop.

    Args:
        root: the install root.
    """

    def __init__(self, root: Path) -> None:
        self._layout = Layout(root)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-sizes")
        self._known: dict[str, _Known] = {}

    async def installed(self) -> list[Installed]:
        """Every complete snapshot, oldest first, with its size."""
        found = self._scan()
        for gone in self._known.keys() - {version for version, _ in found}:
            del self._known[gone]
        return [Installed(version, await self._size(version, ident)) for version, ident in found]

    def close(self) -> None:
        """Drop queued walks; one in progress ends on its own (does not block)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _scan(self) -> list[tuple[str, _Identity | None]]:
        """The snapshot dirs of ``versions/`` (as ``list_snapshots``) with their identity."""
        found: list[tuple[str, _Identity | None]] = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self._layout.versions) as it:
            for entry in it:
                version = snapshot_version(entry.name)
                if version is None or not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    found.append((version, None))  # removed while we looked
                    continue
                found.append((version, (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)))
        return sorted(found, key=lambda item: version_key(item[0]))

    async def _size(self, version: str, identity: _Identity | None) -> int:
        if identity is None:
            return 0
        known = self._known.get(version)
        if known is None or known.identity != identity:
            path = self._layout.snapshot_dir(version)
            walk = asyncio.get_running_loop().run_in_executor(self._pool, snapshot_size, path)
            walk.add_done_callback(mark_retrieved)  # its readers may all go away
            known = self._known[version] = _Known(identity, walk)
        try:
            # Shielded: a reader that goes away does not cancel the others' walk.
            return await asyncio.shield(known.size)
        except OSError:
            # Removed while it was measured (garbage collection): report what we can, and
            # measure again whatever has this name next time.
            if self._known.get(version) is known:
                del self._known[version]
            return 0
