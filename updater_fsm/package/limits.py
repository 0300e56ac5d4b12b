"""The bounds that keep a hostile package from exhausting memory, disk or time."""

from __future__ import annotations

import attrs


@attrs.frozen
class PackageLimits:
    """Bounds that keep a hostile package from exhausting memory, disk or time.

    Attributes:
        max_manifest_bytes: largest accepted ``manifest.json``.
        max_entries: most entries (files and directories) in the archive; judged from the
            end-of-central-directory record and the record headers before ``zipfile``
            parses anything (:func:`updater_fsm.package.archive.judge_central_directory`).
        max_central_directory_bytes: largest central directory, in bytes (``zipfile``
            reads it whole into memory): 10 000 entries averaging 838 bytes of header and
            name, where a real package needs about 100 per entry.
        max_total_uncompressed: largest sum of declared uncompressed sizes.
        max_ratio: largest uncompressed/compressed ratio, per entry and for the archive.
        ratio_min_bytes: entries (and archives) smaller than this skip the ratio check.
        max_name_length: longest accepted entry name / path string, in characters.
        max_modules: most modules in a manifest.
        chunk_size: read size while extracting.
        max_patch_bytes: largest base file and largest result of a ``patched`` module of a
            delta package. Applying a patch holds the base file (the zstd dictionary) and,
            at most, a decoding window in memory; this bounds both (docs/PACKAGE_FORMAT.md
            §7). The builder ships larger files in full.
        patch_window_log_max: largest zstd window (log2 bytes) a patch may declare; a
            frame asking for more is refused instead of allocated.
    """

    max_manifest_bytes: int = 1 << 20
    max_entries: int = 10_000
    max_central_directory_bytes: int = 8 << 20
    max_total_uncompressed: int = 2 << 30
    max_ratio: float = 200.0
    ratio_min_bytes: int = 1 << 20
    max_name_length: int = 1024
    max_modules: int = 10_000
    chunk_size: int = 1 << 20
    max_patch_bytes: int = 16 << 20
    patch_window_log_max: int = 25
