"""Delta packages on a real 3D-printer application: OctoPrint's wheel, unpacked as an app tree.

For each release pair it pip-downloads the two OctoPrint wheels (``--no-deps``: the
application itself), unpacks each into a tree, builds the full package of the new release
and the delta against the old one's full package with our builder, then in a fresh process
per run installs the old release as the factory snapshot and stages the new one from the
full package and from the delta (``snapshots.stage_snapshot``), recording the wall time and
that process's peak RSS (``VmHWM``). Not a test; needs PyPI. Prints Markdown for
docs/PERFORMANCE.md.

    .venv/bin/python bench/delta.py            # the three pairs of issue 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from updater_fsm.ops.package import read_package  # noqa: E402
from updater_fsm.ops.package_build import build_package  # noqa: E402

PAIRS = [("1.10.2", "1.10.3"), ("1.11.1", "1.11.2"), ("1.10.3", "1.11.0")]

_STAGE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from updater_fsm.ops.package import read_package
    from updater_fsm.ops.snapshots import Layout, init_layout, stage_snapshot

    def peak_kb():
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])

    root, base_tree, pkg, version = sys.argv[1:5]
    init_layout(Path(root), sys.argv[5], from_dir=Path(base_tree))
    before = peak_kb()
    started = time.perf_counter()
    manifest = read_package(Path(pkg), expected_version=version, root=Path(root))
    stage_snapshot(Layout(Path(root)), manifest, Path(pkg))
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "before_kb": before, "peak_kb": peak_kb()}))
    """
)


def wheel_tree(version: str, work: Path) -> Path:
    wheels = work / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(wheels),
            f"OctoPrint=={version}",
        ],
        check=True,
    )
    wheel = next(wheels.glob(f"[Oo]cto[Pp]rint-{version}-*.whl"))
    tree = work / f"tree-{version}"
    if not tree.exists():
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tree / "lib/octoprint")
        for path in tree.rglob("*"):
            if path.is_file():
                path.chmod(0o644)
    return tree


def stage(root: Path, base_tree: Path, pkg: Path, version: str, base: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _STAGE, str(root), str(base_tree), str(pkg), version, base],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, float] = json.loads(proc.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-delta-") as tmp:
        work = Path(tmp)
        root_dst = Path("/opt/tope")
        print(
            "| OctoPrint | files | largest file | full package | delta | delta/full"
            " | kept / patched / added / removed | stage full | stage delta"
            " | peak RSS full | peak RSS delta |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for old, new in PAIRS:
            old_tree, new_tree = wheel_tree(old, work), wheel_tree(new, work)
            files = [p for p in new_tree.rglob("*") if p.is_file()]
            largest = max(p.stat().st_size for p in files)
            full_old = build_package(
                old_tree, version=old, output=work / f"full-{old}.zip", root=root_dst
            )
            full = build_package(
                new_tree, version=new, output=work / f"full-{new}.zip", root=root_dst
            )
            delta = build_package(
                new_tree,
                version=new,
                output=work / f"delta-{new}.zip",
                root=root_dst,
                delta_from=full_old.path,
            )
            kinds: dict[str, int] = {}
            for m in read_package(delta.path, expected_version=new, root=root_dst).modules:
                kinds[m.kind.value] = kinds.get(m.kind.value, 0) + 1
            runs = {}
            for name, pkg in (("full", full.path), ("delta", delta.path)):
                root = work / f"root-{new}-{name}"
                # The packages name /opt/tope; rebuild for this sandbox root so dst fits.
                sandbox_pkg = work / f"{name}-{new}-sandbox.zip"
                if name == "full":
                    build_package(new_tree, version=new, output=sandbox_pkg, root=root)
                else:
                    base_pkg = work / f"base-{old}-{new}-sandbox.zip"
                    build_package(old_tree, version=old, output=base_pkg, root=root)
                    build_package(
                        new_tree, version=new, output=sandbox_pkg, root=root, delta_from=base_pkg
                    )
                del pkg
                runs[name] = stage(root, old_tree, sandbox_pkg, new, old)
            print(
                f"| {old} → {new} | {len(files)} | {largest / 1024:.0f} KiB"
                f" | {full.size / 1e6:.2f} MB | {delta.size / 1e3:.0f} kB"
                f" | {100 * delta.size / full.size:.2f} %"
                f" | {kinds.get('kept', 0)} / {kinds.get('patched', 0)} /"
                f" {kinds.get('added', 0)} / {len(delta.manifest.removed)}"
                f" | {runs['full']['seconds']:.2f} s | {runs['delta']['seconds']:.2f} s"
                f" | {runs['full']['peak_kb'] / 1024:.0f} MB"
                f" | {runs['delta']['peak_kb'] / 1024:.0f} MB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
