"""Delta packages on a real 3D-printer application: OctoPrint's wheel, unpacked as an app tree.

For each release pair it pip-downloads the two OctoPrint wheels (``--no-deps``: the
application itself), unpacks each into a tree, builds the full package of the new release
and the delta against the old one's full package with our builder, then in a fresh process
per run installs the old release as the factory snapshot and stages the new one from the
full package and from the delta (``snapshot_staging.stage_snapshot``), recording the wall
time and that process's peak RSS (``VmHWM``). Then, end to end for the first pair: a real
``tope-updater serve --sandbox`` running the old release, the package served over a link
throttled to ``--link-rate`` bytes/s (the tests' package server, ``Behaviour(rate_bps=…)``),
``POST /download`` → ``toInstall`` → ``POST /update`` → ``success``, once with the full
package and once with the delta (each on a fresh sandbox). Not a test; needs PyPI. Prints
Markdown for docs/PERFORMANCE.md.

    .venv/bin/python bench/delta.py            # the three pairs of issue 16, then the link
    .venv/bin/python bench/delta.py --link-rate 250000 --link-only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _util import SandboxUpdater, device_api_stub, get_json, machine, post_json  # noqa: E402

from tests.support.package_server import Behaviour, ThreadedPackageServer  # noqa: E402
from updater_fsm.ops.snapshot_store import init_layout  # noqa: E402
from updater_fsm.package.builder import build_package  # noqa: E402
from updater_fsm.package.manifest import read_package  # noqa: E402

PAIRS = [("1.10.2", "1.10.3"), ("1.11.1", "1.11.2"), ("1.10.3", "1.11.0")]

_STAGE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from updater_fsm.ops.snapshot_staging import stage_snapshot
    from updater_fsm.ops.snapshot_store import Layout, init_layout
    from updater_fsm.package.manifest import read_package

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


def _wait_stage(base: str, stages: tuple[str, ...], timeout: float) -> dict[str, Any]:
    deadline = time.perf_counter() + timeout
    data: dict[str, Any] = {}
    while time.perf_counter() < deadline:
        data = get_json(f"{base}/progress")["data"]
        if data.get("stage") in stages:
            return data
        time.sleep(0.02)
    raise RuntimeError(f"no stage in {stages} within {timeout} s (last: {data})")


def over_the_link(
    work: Path, old: str, new: str, rate: float, device_api: str
) -> dict[str, dict[str, float]]:
    """Full vs delta, end to end over a throttled link: seconds per phase and bytes sent."""
    old_tree, new_tree = wheel_tree(old, work), wheel_tree(new, work)
    runs: dict[str, dict[str, float]] = {}
    with ThreadedPackageServer() as server:
        for kind in ("full", "delta"):
            sandbox = work / f"link-{kind}"
            root = (sandbox / "root").resolve()
            init_layout(root, old, from_dir=old_tree)  # the device runs the old release
            pkg = work / f"link-{kind}-{new}.zip"
            if kind == "full":
                built = build_package(new_tree, version=new, output=pkg, root=root)
            else:
                base = build_package(
                    old_tree, version=old, output=work / "link-base.zip", root=root
                )
                built = build_package(
                    new_tree, version=new, output=pkg, root=root, delta_from=base.path
                )
            url = server.call(
                server.server.add, pkg.name, pkg.read_bytes(), Behaviour(rate_bps=rate)
            )
            body = built.download_request(str(url))
            with SandboxUpdater(sandbox, device_api_url=device_api) as updater:
                started = time.perf_counter()
                answer = post_json(f"{updater.base}/download", body)
                if answer.get("code") != 200:
                    raise RuntimeError(f"POST /download refused: {answer}")
                ready = _wait_stage(updater.base, ("toInstall", "failed"), 300)
                downloaded = time.perf_counter()
                if ready["stage"] != "toInstall":
                    raise RuntimeError(f"{kind}: download failed: {ready.get('error')}")
                answer = post_json(f"{updater.base}/update", {"version": new})
                if answer.get("code") != 200:
                    raise RuntimeError(f"POST /update refused: {answer}")
                final = _wait_stage(updater.base, ("success", "failed"), 300)
                done = time.perf_counter()
                if final["stage"] != "success":
                    raise RuntimeError(f"{kind}: install failed: {final.get('error')}")
            runs[kind] = {
                "size": built.size,
                "download_s": downloaded - started,
                "install_s": done - downloaded,
                "total_s": done - started,
            }
    return runs


def print_link(old: str, new: str, rate: float, runs: dict[str, dict[str, float]]) -> None:
    print(
        f"\nEnd to end over a link throttled to {rate / 1e6:g} MB/s, OctoPrint {old} → {new}"
        " (POST /download → success; real serve, sandbox root, no units):\n"
    )
    print("| package | size | download + verify | install (stage, switch) | total |")
    print("|---|---|---|---|---|")
    for kind, r in runs.items():
        print(
            f"| {kind} | {r['size'] / 1e3:.0f} kB | {r['download_s']:.2f} s"
            f" | {r['install_s']:.2f} s | {r['total_s']:.2f} s |"
        )
    full, delta = runs["full"]["total_s"], runs["delta"]["total_s"]
    print(f"\ndelta/full total time: {100 * delta / full:.1f} % ({full / delta:.1f} times faster)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--link-rate", type=float, default=1e6, help="bytes/s of the link")
    parser.add_argument("--link-only", action="store_true", help="only the end-to-end run")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-delta-") as tmp:
        work = Path(tmp)
        if not args.link_only:
            sizes_and_staging(work)
        old, new = PAIRS[0]
        with device_api_stub() as device_api:
            runs = over_the_link(work, old, new, args.link_rate, device_api)
        print_link(old, new, args.link_rate, runs)


def sizes_and_staging(work: Path) -> None:
    """The size / staging table (one row per pair)."""
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
        full = build_package(new_tree, version=new, output=work / f"full-{new}.zip", root=root_dst)
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
