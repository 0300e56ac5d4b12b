"""``install.sh --bundle`` checks what wheels built from source need (issue 25): a bundle's
``manifest.json`` ``built`` entries name the shared libraries (``needs``) and the glibc
(``glibc``) their extensions were linked against; a device without them is refused before
anything is installed, naming the wheel, how it was built and what is missing.

Cheap (no systemd, no network): hand-made manifests, and install.sh stops in its first step.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "systemd" / "install.sh"
HOW = "built from the sdist by systemd/build_wheels.py: cross-compiled (test)"


def run_install(tmp_path: Path, built: list[dict[str, object]]) -> subprocess.CompletedProcess[str]:
    bundle = tmp_path / "tope-updater-9.9.9-sparc"
    (bundle / "wheels").mkdir(parents=True)
    manifest = {
        "format": 1, "name": "tope-updater", "version": "9.9.9", "arch": "sparc",
        "python": "cp311", "project_wheel": "tope_updater-9.9.9-py3-none-any.whl",
        "screen": False, "missing": [], "built": built, "wheels": [],
    }  # fmt: skip
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    root = tmp_path / "root"
    return subprocess.run(
        ["bash", str(INSTALL), "--bundle", str(bundle), "--root", str(root),
         "--prefix", str(tmp_path / "prefix"), "--config-dir", str(tmp_path / "etc"),
         "--unit-dir", str(tmp_path / "units"), "--bin-links", str(tmp_path / "bin")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def built(needs: list[str], glibc: str) -> list[dict[str, object]]:
    return [{"name": "cffi", "version": "2.1.1", "how": HOW, "needs": needs, "glibc": glibc}]


def test_a_missing_library_is_refused(tmp_path: Path) -> None:
    proc = run_install(tmp_path, built(["libtope-absent.so.9"], "2.17"))
    assert proc.returncode != 0
    assert "cffi 2.1.1 in this bundle was built from source" in proc.stderr
    assert "it needs libtope-absent.so.9, which this machine lacks" in proc.stderr
    assert not (tmp_path / "root").exists()


def test_a_newer_glibc_is_refused(tmp_path: Path) -> None:
    proc = run_install(tmp_path, built([], "99.0"))
    assert proc.returncode != 0
    assert "it needs glibc >= 99.0, this machine has 2." in proc.stderr


def test_present_libraries_pass_to_the_next_check(tmp_path: Path) -> None:
    proc = run_install(tmp_path, built(["libc.so.6"], "2.17"))
    assert proc.returncode != 0
    assert "this bundle is for sparc" in proc.stderr  # the architecture check comes next
    assert "built from source" not in proc.stderr
