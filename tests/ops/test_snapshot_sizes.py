"""``SnapshotSizes``: each snapshot measured once, by one walk however many readers ask."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from updater_fsm.ops import snapshot_sizes, snapshot_store
from updater_fsm.ops.snapshot_sizes import Installed, SnapshotSizes


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the snapshot dirs walked, in order."""
    seen: list[str] = []
    real = snapshot_store.snapshot_size

    def counting(path: Path) -> int:
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(snapshot_sizes, "snapshot_size", counting)
    return seen


def _snapshot(root: Path, version: str, sizes: list[int]) -> Path:
    path = root / "versions" / f"v{version}"
    (path / "lib").mkdir(parents=True)
    for i, size in enumerate(sizes):
        (path / "lib" / f"f{i}").write_bytes(b"x" * size)
    return path


async def test_sizes_are_those_of_a_full_walk_and_each_snapshot_is_walked_once(
    tmp_path: Path, walks: list[str]
) -> None:
    _snapshot(tmp_path, "1.10.0", [10, 20])
    _snapshot(tmp_path, "1.9.0", [5])
    (tmp_path / "versions" / "v1.11.0.staging").mkdir()  # not a complete snapshot
    sizes = SnapshotSizes(tmp_path)
    try:
        answers = await asyncio.gather(*(sizes.installed() for _ in range(64)))
        expected = [Installed("1.9.0", 5), Installed("1.10.0", 30)]
        assert all(answer == expected for answer in answers)
        assert sorted(walks) == ["v1.10.0", "v1.9.0"]  # 64 readers, one walk each
        assert await sizes.installed() == expected
        assert len(walks) == 2
    finally:
        sizes.close()


async def test_a_replaced_or_removed_snapshot_is_measured_again(
    tmp_path: Path, walks: list[str]
) -> None:
    _snapshot(tmp_path, "1.0.0", [7])
    sizes = SnapshotSizes(tmp_path)
    try:
        assert await sizes.installed() == [Installed("1.0.0", 7)]
        # Staged again under the same version: a new directory renamed over the old one.
        staging = _snapshot(tmp_path, "1.0.0.staging-new", [7, 100])
        old = tmp_path / "versions" / "v1.0.0"
        os.rename(old, tmp_path / "versions" / "v1.0.0.trash")
        os.rename(staging, old)
        assert await sizes.installed() == [Installed("1.0.0", 107)]
        os.rename(old, tmp_path / "versions" / "gone")
        assert await sizes.installed() == []
        os.rename(tmp_path / "versions" / "gone", old)  # back: forgotten, so measured again
        assert await sizes.installed() == [Installed("1.0.0", 107)]
        assert walks == ["v1.0.0"] * 3
    finally:
        sizes.close()


async def test_a_reader_that_goes_away_does_not_cancel_the_walk_of_the_others(
    tmp_path: Path, walks: list[str]
) -> None:
    _snapshot(tmp_path, "1.0.0", [3])
    sizes = SnapshotSizes(tmp_path)
    try:
        first = asyncio.create_task(sizes.installed())
        second = asyncio.create_task(sizes.installed())
        await asyncio.sleep(0)  # both wait for the one walk
        first.cancel()
        assert await second == [Installed("1.0.0", 3)]
        assert walks == ["v1.0.0"]
    finally:
        sizes.close()


async def test_no_versions_dir_is_no_snapshot(tmp_path: Path) -> None:
    sizes = SnapshotSizes(tmp_path)
    assert await sizes.installed() == []
    sizes.close()
