"""Hostile inputs judged by a real ``tope-updater serve``: memory and API latency stay low.

Runs the cases of ``bench/hostile_inputs.py`` (the same code the bench prints figures
with): the package is downloaded from a real HTTP server on 127.0.0.1 and judged — a
hostile archive when it is verified, a post_cmd's output by the install — while
``/progress`` is polled at 200 requests/s.
"""

from __future__ import annotations

from pathlib import Path

from bench.hostile_inputs import CASES, MEMORY_MAX_MB, PROGRESS_LIMIT_MS, measure


def test_million_entry_zip_is_refused_within_memory_max_and_progress_stays_fast(
    tmp_path: Path,
) -> None:
    (outcome,) = measure(CASES[:1], rate=200.0, window_s=1.0, parent=tmp_path)
    assert outcome.as_expected, outcome
    assert outcome.error == "INVALID_MANIFEST: archive: 1000000 entries, limit is 10000"
    assert outcome.peak_rss_mb < MEMORY_MAX_MB, outcome
    assert outcome.progress_p99_ms < PROGRESS_LIMIT_MS, outcome
    assert outcome.requests >= 100, outcome


def test_post_cmd_printing_400_mb_installs_within_memory_max(tmp_path: Path) -> None:
    (outcome,) = measure(CASES[1:2], rate=200.0, window_s=1.0, parent=tmp_path)
    assert outcome.error == "success", outcome
    assert outcome.peak_rss_mb < MEMORY_MAX_MB, outcome
    assert outcome.progress_p99_ms < PROGRESS_LIMIT_MS, outcome
