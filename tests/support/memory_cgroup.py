"""A real memory cgroup for a test process: the unit's ``MemoryMax`` without systemd.

The updater ships with ``MemoryMax=128M``; tests that claim "bounded memory" put the real
updater process into a cgroup with the same limit and read the kernel's own peak and OOM
counters. Works with cgroup v2 (``memory.max``) and v1 (``memory.limit_in_bytes``); needs
root, and the test skips with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = Path("/sys/fs/cgroup")


class MemoryCgroup:
    """One cgroup with a memory limit; processes are moved in with :meth:`add`."""

    def __init__(self, path: Path, v2: bool) -> None:
        self.path = path
        self.v2 = v2

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def peak_bytes(self) -> int:
        """The highest memory use the kernel charged to the group."""
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        """How many processes of the group the OOM killer took."""
        name = "memory.events" if self.v2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0


def _own_cgroup(controller_root: Path, v2: bool) -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, rel = line.split(":", 2)
        if (v2 and hierarchy == "0") or (not v2 and "memory" in controllers.split(",")):
            return controller_root / rel.lstrip("/")
    raise FileNotFoundError("no memory cgroup for this process")


def _base() -> tuple[Path, bool]:
    v1 = _ROOT / "memory"
    if (v1 / "memory.limit_in_bytes").exists() or (v1 / "cgroup.procs").exists():
        return _own_cgroup(v1, v2=False), False
    for candidate in (_ROOT, _ROOT / "unified"):
        if "memory" in _read(candidate / "cgroup.controllers").split():
            return _own_cgroup(candidate, v2=True), True
    raise FileNotFoundError("no cgroup memory controller")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[MemoryCgroup]:
    """A fresh cgroup limited to ``limit_bytes`` (swap included), removed afterwards."""
    try:
        base, v2 = _base()
        path = base / f"tope-test-{uuid.uuid4().hex[:8]}"
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup (needs root and cgroupfs): {exc}")
    try:
        if v2:
            (path / "memory.max").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):
                (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
        yield MemoryCgroup(path, v2)
    finally:
        _remove(path)


def _remove(path: Path) -> None:
    parent = path.parent
    with contextlib.suppress(OSError):
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (parent / "cgroup.procs").write_text(pid)
    with contextlib.suppress(OSError):
        os.rmdir(path)
