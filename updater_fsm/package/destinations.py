"""Where a module's file may go (docs/PACKAGE_FORMAT.md §2), judged on the text and on disk.

A ``dst`` is an absolute path strictly inside the install root (but not in its
``versions/`` snapshot store), where it goes into the new snapshot, or strictly inside one
of the configured extra roots, where it is replaced in place at the switch (an *external*
module). :func:`check_dst` judges the text; :func:`real_dst_problem` judges the disk (no
escape through a symlink); :func:`plan_snapshot` gives staging every path it needs in one
pass.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import attrs

from updater_fsm.core.errors import ErrorCode, UpdaterError
from updater_fsm.core.manifest import DeltaKind, Manifest, Module


def has_control_character(text: str) -> bool:
    """Whether ``text`` holds a C0 control character or DEL (never in a path we accept)."""
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def dst_relative_to(dst: str, root: Path) -> PurePosixPath | None:
    """Return ``dst`` relative to ``root`` when it lies strictly inside it, else None.

    Both are compared lexically after normalisation (``dst`` is validated to contain no
    ``..`` before this is used); ``root`` itself is not "inside".
    """
    norm = PurePosixPath(posixpath.normpath(dst))
    base = PurePosixPath(posixpath.normpath(str(root)))
    if norm == base or not norm.is_relative_to(base):
        return None
    return norm.relative_to(base)


def is_internal(module: Module, root: Path) -> bool:
    """Whether ``module.dst`` lands inside the snapshot (under ``root``) rather than outside."""
    return dst_relative_to(module.dst, root) is not None


def internal_modules(manifest: Manifest, root: Path) -> tuple[Module, ...]:
    """Modules whose ``dst`` is under the install root (they go into the new snapshot)."""
    return tuple(m for m in manifest.modules if is_internal(m, root))


def external_modules(manifest: Manifest, root: Path) -> tuple[Module, ...]:
    """Modules whose ``dst`` is outside the install root (replaced in place, with backup)."""
    return tuple(m for m in manifest.modules if not is_internal(m, root))


def check_dst(dst: str, root: Path, extra_roots: Sequence[Path]) -> str | None:
    """Why ``dst`` is not an acceptable destination, or None when it is.

    Acceptable: an absolute path without ``..`` strictly inside ``root`` but not inside
    ``root/versions``, or strictly inside one of ``extra_roots``.
    """
    if not dst.startswith("/"):
        return "must be an absolute path"
    if "\x00" in dst or has_control_character(dst):
        return "control character in path"
    if any(part == ".." for part in dst.split("/")):
        return "must not contain '..'"
    if dst.endswith("/") or posixpath.normpath(dst) == "/":
        return "must name a file, not a directory"
    rel = dst_relative_to(dst, root)
    if rel is not None:
        if rel.parts[0] == "versions":
            return f"must not be under {root}/versions (the snapshot store)"
        return None
    if any(dst_relative_to(dst, extra) is not None for extra in extra_roots):
        return None
    allowed = ", ".join(str(p) for p in (root, *extra_roots))
    return f"{dst} is outside the install root and the allowed extra roots ({allowed})"


def real_dst_problem(dst: str, extra_roots: Sequence[Path]) -> str | None:
    """Why ``dst`` (lexically under an extra root) would really be written elsewhere.

    :func:`check_dst` judges the text; this judges the disk *now*: the directory ``dst``
    goes into is resolved through every symlink that exists (dangling ones included: a
    directory created there would land at their target; components that do not exist yet
    are taken as they are, they will be created as plain directories) and must stay inside
    the real path of one of ``extra_roots``. ``dst`` itself may be a symlink: it is
    replaced, never followed. Run at staging (before any service is stopped) and again at
    the switch (the links may have changed meanwhile).

    Returns:
        None when acceptable, else ``"<dir> resolves to <real>, outside the extra roots
        (<roots>)"``.
    """
    real_roots = [Path(os.path.realpath(root)) for root in extra_roots]
    parent = Path(dst).parent
    real = Path(os.path.realpath(parent))
    if any(real == root or real.is_relative_to(root) for root in real_roots):
        return None
    allowed = ", ".join(str(root) for root in extra_roots)
    return f"{parent} resolves to {real}, outside the extra roots ({allowed})"


@attrs.frozen
class SnapshotPlan:
    """Where a package's files are, relative to a snapshot, for staging it.

    Attributes:
        targets: per module, in manifest order, the path of its file inside the new
            snapshot, or None for a module outside the install root (written at the
            switch, its destination already judged on disk).
        bases: per module, the path inside the running snapshot of a kept or patched
            module's base (its ``base``, else its ``dst``), None for an added module or a
            base outside the install root (the reader refuses one).
        removed: per ``removed`` entry of a delta, its path inside the snapshot, or None
            when it is outside the install root (the reader refuses one).
    """

    targets: tuple[PurePosixPath | None, ...]
    bases: tuple[PurePosixPath | None, ...]
    removed: tuple[PurePosixPath | None, ...]


def plan_snapshot(manifest: Manifest, root: Path, extra_roots: Sequence[Path]) -> SnapshotPlan:
    """Judge every destination of ``manifest`` again and say where its files are.

    Each ``dst`` is checked as the reader checks it (:func:`check_dst`), and one outside
    ``root`` also on disk (:func:`real_dst_problem`): those are written at the switch, after
    the units were stopped, so a bad one must fail the install now, while nothing is
    stopped.

    Raises:
        UpdaterError: ``INVALID_MANIFEST: modules[<i>].dst: <problem>``.
    """
    targets = []
    for index, module in enumerate(manifest.modules):
        rel = dst_relative_to(module.dst, root)
        problem = check_dst(module.dst, root, extra_roots) or (
            real_dst_problem(module.dst, extra_roots) if rel is None else None
        )
        if problem:
            raise UpdaterError(ErrorCode.INVALID_MANIFEST, f"modules[{index}].dst: {problem}")
        targets.append(rel)
    return SnapshotPlan(
        targets=tuple(targets),
        bases=tuple(
            None if m.kind is DeltaKind.ADDED else dst_relative_to(m.base_path, root)
            for m in manifest.modules
        ),
        removed=tuple(dst_relative_to(path, root) for path in manifest.removed),
    )
