"""Package files of the device itself (``file://`` URLs): what may be named, and the copy.

Real files, links, a FIFO, a device node and a 10 GB sparse file; the copy is the real
download code reading a real file, resumed from a real ``.part``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.core.events import DownloadRequest, ResumePoint
from updater_fsm.ops import download, local_package
from updater_fsm.ops.local_package import LocalPackageRefused, judge

MAX = local_package.largest_file(2 * 1024**3)


@pytest.fixture
def stick(tmp_path: Path) -> Path:
    """A directory standing for a mounted USB stick, with one package file on it."""
    path = tmp_path / "media" / "usb"
    path.mkdir(parents=True)
    (path / "up.zip").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return path


def refused(url: str, dirs: list[Path], max_bytes: int = MAX) -> str:
    with pytest.raises(LocalPackageRefused) as info:
        judge(url, dirs, max_bytes)
    return str(info.value)


def test_a_file_under_a_configured_directory_is_accepted(stick: Path) -> None:
    assert judge((stick / "up.zip").as_uri(), [stick.parent], MAX) == stick / "up.zip"
    assert judge(f"file://localhost{stick}/up.zip", [stick], MAX) == stick / "up.zip"


def test_a_name_with_spaces_is_percent_encoded_and_accepted(stick: Path) -> None:
    (stick / "My Update.zip").write_bytes(b"x")
    url = (stick / "My Update.zip").as_uri()
    assert "%20" in url
    assert judge(url, [stick], MAX) == stick / "My Update.zip"


def test_no_configured_directory_refuses_every_file_url(stick: Path) -> None:
    assert "none is configured" in refused((stick / "up.zip").as_uri(), [])


def test_a_file_outside_the_directories_is_refused(stick: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.zip"
    other.write_bytes(b"x")
    problem = refused(other.as_uri(), [stick])
    assert problem == f"names {other}, which is outside local_package_dirs ({stick})"
    assert "outside local_package_dirs" in refused("file:///etc/passwd", [stick])
    # `..` is resolved before judging, never compared as text
    assert "outside" in refused(f"file://{stick}/../../elsewhere.zip", [stick])


def test_a_link_out_of_the_directories_is_refused(stick: Path, tmp_path: Path) -> None:
    (stick / "evil.zip").symlink_to("/etc/passwd")
    (stick / "sub").symlink_to(tmp_path)  # a linked directory on the stick
    (tmp_path / "x.zip").write_bytes(b"x")
    assert "resolves to /etc/passwd, outside" in refused((stick / "evil.zip").as_uri(), [stick])
    assert "outside" in refused((stick / "sub" / "x.zip").as_uri(), [stick])


def test_a_link_inside_the_directories_is_followed(stick: Path) -> None:
    (stick / "latest.zip").symlink_to("up.zip")
    assert judge((stick / "latest.zip").as_uri(), [stick], MAX) == stick / "up.zip"


def test_what_is_not_a_regular_file_is_refused_before_it_is_opened(stick: Path) -> None:
    os.mkfifo(stick / "fifo.zip")
    assert "is a FIFO, not a regular file" in refused((stick / "fifo.zip").as_uri(), [stick])
    assert "is a directory" in refused(stick.as_uri(), [stick.parent])
    assert "is a character device" in refused("file:///dev/zero", [Path("/dev")])
    assert "does not exist" in refused((stick / "nope.zip").as_uri(), [stick])


def test_a_huge_sparse_file_is_refused_before_a_byte_is_read(stick: Path) -> None:
    huge = stick / "big.zip"
    with huge.open("wb") as fh:
        fh.truncate(10 * 1024**3)  # 10 GB apparent, nothing allocated
    problem = refused(huge.as_uri(), [stick])
    assert f"{10 * 1024**3} bytes: larger than any package may be" in problem


def test_urls_naming_another_host_or_no_absolute_path_are_refused(stick: Path) -> None:
    assert "names the host 'example.com'" in refused("file://example.com/x.zip", [stick])
    assert "query or fragment" in refused(f"file://{stick}/up.zip?x=1", [stick])
    assert "not UTF-8" in refused("file:///media/%ff.zip", [stick])


# ---- the copy --------------------------------------------------------------------------


def _request(path: Path, size: int | None = None) -> DownloadRequest:
    data = path.read_bytes()
    return DownloadRequest(
        version="1.2.0",
        package_url=path.as_uri(),
        package_name="copied.zip",
        package_size=len(data) if size is None else size,
        package_md5=hashlib.md5(data).hexdigest(),
    )


def _access(dirs: list[Path]) -> download.SourceAccess:
    return download.SourceAccess(local_dirs=tuple(dirs), local_max_bytes=MAX)


async def test_the_copy_lands_in_the_download_area_hashed_on_the_way(
    stick: Path, tmp_path: Path
) -> None:
    src = stick / "up.zip"
    points: list[ResumePoint] = []

    async def on_checkpoint(point: ResumePoint) -> None:
        points.append(point)

    result = await download.download_package(
        _request(src),
        tmp_path / "downloads",
        resume=None,
        on_checkpoint=on_checkpoint,
        access=_access([stick]),
        settings=download.DownloadSettings(checkpoint_bytes=1024 * 1024),
    )
    data = src.read_bytes()
    assert result.path.read_bytes() == data
    assert (result.md5, result.sha256) == (
        hashlib.md5(data).hexdigest(),
        hashlib.sha256(data).hexdigest(),
    )
    assert not (tmp_path / "downloads" / "copied.zip.part").exists()
    # the file's identity is journaled like an ETag, and the copy checkpoints on the way
    assert points[0] == ResumePoint(0, local_package.validator(src.stat()), None)
    assert len({p.offset for p in points}) >= 3


async def test_a_copy_resumes_from_its_journaled_offset(stick: Path, tmp_path: Path) -> None:
    src = stick / "up.zip"
    data = src.read_bytes()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    # The first 1 MiB was copied and journaled before a crash. Its bytes are marked here so
    # the result shows they were kept, not copied again.
    kept = b"\x00" * (1024 * 1024)
    (downloads / "copied.zip.part").write_bytes(kept + b"junk past the durable offset")
    resume = ResumePoint(len(kept), local_package.validator(src.stat()), None)
    result = await download.download_package(
        _request(src), downloads, resume=resume, access=_access([stick])
    )
    assert result.md5 == hashlib.md5(kept + data[len(kept) :]).hexdigest()


async def test_a_file_changed_since_the_copy_began_is_copied_again(
    stick: Path, tmp_path: Path
) -> None:
    src = stick / "up.zip"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "copied.zip.part").write_bytes(b"\x00" * 1024)
    stale = ResumePoint(1024, '"file-1-2-3-4"', None)
    result = await download.download_package(
        _request(src), downloads, resume=stale, access=_access([stick])
    )
    assert result.md5 == hashlib.md5(src.read_bytes()).hexdigest()


async def test_a_size_other_than_the_request_says_is_refused(stick: Path, tmp_path: Path) -> None:
    src = stick / "up.zip"
    with pytest.raises(UpdaterError) as info:
        await download.download_package(
            _request(src, size=10), tmp_path / "downloads", resume=None, access=_access([stick])
        )
    assert info.value.code is ErrorCode.PACKAGE_SIZE_MISMATCH
    assert f"{src} is {src.stat().st_size} bytes, the request said 10" in str(info.value)
    assert not (tmp_path / "downloads" / "copied.zip.part").exists()


async def test_a_file_swapped_for_a_fifo_after_the_request_fails_at_once(
    stick: Path, tmp_path: Path
) -> None:
    src = stick / "up.zip"
    request = _request(src)
    src.unlink()
    os.mkfifo(src)  # judged when the request came; replaced before the copy opened it
    with pytest.raises(UpdaterError) as info:
        await asyncio.wait_for(
            download.download_package(
                request, tmp_path / "downloads", resume=None, access=_access([stick])
            ),
            10,
        )
    assert info.value.code is ErrorCode.DOWNLOAD_FAILED
    assert "is a FIFO, not a regular file" in str(info.value)


async def test_the_copy_honours_the_directories_again(stick: Path, tmp_path: Path) -> None:
    with pytest.raises(UpdaterError) as info:
        await download.download_package(
            _request(stick / "up.zip"), tmp_path / "downloads", resume=None, access=_access([])
        )
    assert info.value.code is ErrorCode.DOWNLOAD_FAILED
    assert "none is configured" in str(info.value)
