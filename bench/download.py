"""Benchmark: download_package (download + MD5 + SHA-256 + write + fsync) against curl.

Serves one random file from a local server (nginx if available, else the aiohttp package
server from the tests, in its own process) and measures, on the same server and file:

* ``curl -s URL | tee FILE | md5sum`` (the baseline: download + one hash + write, no fsync);
* ``download_package`` in a child process (so its peak RSS, ``VmHWM``, is its own);
* optionally ``--variants``: the same loop with aiofiles and hashing on the event loop, to
  justify the writer-thread design.

Targets: updater throughput >= 0.9 x curl, updater peak RSS <= 50 MB.

Usage::

    python bench/download.py [--size 1G] [--runs 3] [--server auto|nginx|aiohttp]
                             [--install-nginx] [--dir /var/tmp] [--variants]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import (
    REPO,
    MiB,
    free_port,
    machine,
    make_random_file,
    parse_size,
    stop_process,
    wait_port,
)

sys.path.insert(0, str(REPO))


@contextmanager
def nginx_server(root: Path, work: Path) -> Iterator[str]:
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(
        f"""daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/error.log;
events {{ worker_connections 64; }}
http {{ access_log off; sendfile on; tcp_nopush on; client_body_temp_path {work};
  proxy_temp_path {work}; fastcgi_temp_path {work}; uwsgi_temp_path {work};
  scgi_temp_path {work};
  server {{ listen 127.0.0.1:{port}; root {root}; }} }}
"""
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(work)])
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@contextmanager
def aiohttp_server(path: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.package_server", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        yield url.rsplit("/", 1)[0]
    finally:
        stop_process(proc)


def run_curl(url: str, out: Path, md5: str) -> float:
    os.sync()  # start every run with no dirty pages from the previous one
    t0 = time.perf_counter()
    res = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"curl -s '{url}' | tee '{out}' | md5sum"],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - t0
    assert res.stdout.split()[0] == md5, "curl md5 mismatch"
    out.unlink()
    return elapsed


def run_updater(url: str, out_dir: Path, size: int, md5: str, variant: str) -> dict[str, float]:
    os.sync()
    res = subprocess.run(
        [sys.executable, __file__, "_child", url, str(out_dir), str(size), md5, variant],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"child failed:\n{res.stdout}\n{res.stderr}")
    result: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])
    shutil.rmtree(out_dir / "dl", ignore_errors=True)
    return result


def vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def aiofiles_variant(url: str, out: Path) -> str:
    """The alternative design: aiofiles writes, hashing on the event loop (for comparison)."""
    import aiofiles
    import aiohttp

    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.get(url) as resp,
        aiofiles.open(out, "wb") as fh,
    ):
        since = 0
        async for data in resp.content.iter_chunked(256 * 1024):
            md5.update(data)
            sha.update(data)
            await fh.write(data)
            since += len(data)
            if since >= 4 * MiB:
                await fh.flush()
                await asyncio.to_thread(os.fsync, fh.fileno())
                since = 0
        await fh.flush()
        await asyncio.to_thread(os.fsync, fh.fileno())
    return md5.hexdigest()


async def with_lag_probe(coro: Any) -> tuple[Any, list[float]]:
    """Run ``coro`` while measuring how late a 5 ms timer fires (event-loop lag, seconds)."""
    lags: list[float] = []

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - t - 0.005)

    task = asyncio.create_task(probe())
    try:
        return await coro, lags
    finally:
        task.cancel()


def child(url: str, out_dir: str, size: str, md5: str, variant: str) -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from updater_fsm.core.events import DownloadRequest
    from updater_fsm.ops.download import DownloadSettings, download_package

    base = vm_kb("VmRSS")
    dl = Path(out_dir) / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    spec = DownloadRequest("1.0.0", url, "pkg.bin", int(size), md5)
    t0 = time.perf_counter()
    if variant == "aiofiles":
        got, lags = asyncio.run(with_lag_probe(aiofiles_variant(url, dl / "pkg.bin")))
    else:
        settings = DownloadSettings()
        if "@" in variant:  # thread@64K: chunk and socket buffer size
            n = parse_size(variant.split("@", 1)[1])
            settings = DownloadSettings(chunk_size=n, read_bufsize=n)
        res, lags = asyncio.run(
            with_lag_probe(download_package(spec, dl, resume=None, settings=settings))
        )
        got = res.md5
    elapsed = time.perf_counter() - t0
    assert got == md5, f"md5 mismatch {got} != {md5}"
    lags.sort()
    p99 = lags[int(len(lags) * 0.99)] if lags else 0.0
    print(
        json.dumps(
            {
                "elapsed": elapsed,
                "hwm_kb": vm_kb("VmHWM"),
                "base_kb": base,
                "lag_p99_ms": p99 * 1000,
                "lag_max_ms": (lags[-1] if lags else 0.0) * 1000,
            }
        )
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(*sys.argv[2:7])
        return
    p = argparse.ArgumentParser(description="download_package vs curl")
    p.add_argument("--size", type=parse_size, default=parse_size("1G"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--server", choices=["auto", "nginx", "aiohttp"], default="auto")
    p.add_argument("--install-nginx", action="store_true")
    p.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    p.add_argument("--variants", action="store_true", help="also time the aiofiles design")
    p.add_argument("--chunk-sizes", default="", help="also time these chunk sizes, e.g. 64K,1M")
    args = p.parse_args()

    if args.install_nginx and shutil.which("nginx") is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx-light"], check=False)
        if shutil.which("nginx") is None:
            subprocess.run(["apt-get", "install", "-y", "-q", "nginx"], check=False)
    kind = args.server
    if kind == "auto":
        kind = "nginx" if shutil.which("nginx") else "aiohttp"

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-download-") as tmp:
        work = Path(tmp)
        need = args.size * 3 + 64 * MiB
        free = shutil.disk_usage(work).free
        if free < need:
            sys.exit(f"need {need / 2**30:.1f} GiB free in {work}, have {free / 2**30:.1f}")
        root = work / "www"
        root.mkdir()
        src = root / "pkg.bin"
        print(f"writing {args.size / MiB:.0f} MiB of random data ...", flush=True)
        md5 = make_random_file(src, args.size)
        subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # warm cache
        server = nginx_server(root, work) if kind == "nginx" else aiohttp_server(src)
        variants = ["thread", "aiofiles"] if args.variants else ["thread"]
        variants += [f"thread@{c}" for c in args.chunk_sizes.split(",") if c]
        rows: dict[str, list[float]] = {"curl": [], **{v: [] for v in variants}}
        hwm: dict[str, list[int]] = {v: [] for v in variants}
        lag: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        base: list[int] = []
        with server as base_url:
            url = f"{base_url}/pkg.bin"
            for run in range(args.runs):
                rows["curl"].append(run_curl(url, work / "curl.out", md5))
                for v in variants:
                    r = run_updater(url, work, args.size, md5, v)
                    rows[v].append(r["elapsed"])
                    hwm[v].append(int(r["hwm_kb"]))
                    lag[v].append((r["lag_p99_ms"], r["lag_max_ms"]))
                    base.append(int(r["base_kb"]))
                print(f"run {run + 1}: " + ", ".join(f"{k} {x[-1]:.2f}s" for k, x in rows.items()))

    size_mb = args.size / 1e6
    curl_med = statistics.median(rows["curl"])
    print()
    print(f"machine: {machine()}")
    print(f"server: {kind}; file: {args.size / MiB:.0f} MiB; runs: {args.runs} (median shown)")
    print()
    print("| client | median s | MB/s | vs curl | peak RSS (VmHWM) | loop lag p99 / max |")
    print("|---|---|---|---|---|---|")
    names = {
        "curl": "curl -s URL \\| tee FILE \\| md5sum",
        "thread": "download_package, defaults (MD5+SHA-256, fsync every 4 MiB)",
        "aiofiles": "variant: aiofiles + hashing on the loop",
    }
    for k, xs in rows.items():
        if "@" in k:
            names[k] = f"download_package, chunk_size {k.split('@')[1]}"
        med = statistics.median(xs)
        rss = f"{max(hwm[k]) / 1024:.1f} MB" if k in hwm else "-"
        lg = "-"
        if k in lag:
            lg = f"{max(p for p, _ in lag[k]):.1f} / {max(m for _, m in lag[k]):.1f} ms"
        print(
            f"| {names[k]} | {med:.2f} | {size_mb / med:.0f} | {curl_med / med:.2f}x | {rss} "
            f"| {lg} |"
        )
    print(
        f"\n(child RSS after imports, before the download: {statistics.median(base) / 1024:.1f} MB)"
    )


if __name__ == "__main__":
    main()
