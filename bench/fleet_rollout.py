#!/usr/bin/env python3
"""A fleet on one machine: hawkBit rollouts to N real ``tope-updater serve`` devices.

Starts a real hawkBit (tests/support/hawkbit.py: built with Maven once, H2 in memory) and
N devices as the fleet tests make them (tests/fleet/devices.py: own root bind-mounted at
the same path in its own mount namespace, own state, port, device-api stand-in, controller
id and target token; needs root for the mount namespaces), then measures:

* the server: build, start time, RSS and Java heap (``jcmd GC.heap_info``) idle and after
  the rollouts;
* each agent idle: RSS and CPU per poll (``/proc/<pid>/stat`` over a quiet window, divided
  by the polls ``/healthz`` counted), and the requests per device per hour that implies at
  hawkBit's default interval (5 min) and at the test interval;
* a rollout of a good release in G groups (next group at 100 % success) and in one group:
  wall time from start to ``finished``;
* a broken release with a 20 % error threshold: time until hawkBit paused it, and how many
  devices it touched.

    python bench/fleet_rollout.py                # --devices 10 --groups 5 --idle 20

Prints Markdown tables for docs/FLEET.md. Stops everything it started.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _util import machine, percentile, print_table, proc_status_mb, process_cpu_s, temp_dir

from tests.crash import harness as h
from tests.fleet.devices import NamespacedUpdater, fleet_of, fleet_package
from tests.support.hawkbit import HawkbitServer

DEFAULT_POLL_S = 300.0  # hawkBit's default pollingTime, 00:05:00


def heap_used_mb(pid: int) -> str:
    """The Java heap in use and committed, from ``jcmd <pid> GC.heap_info``."""
    jcmd = shutil.which("jcmd")
    if jcmd is None:
        return "n/a (no jcmd)"
    out = subprocess.run(
        [jcmd, str(pid), "GC.heap_info"], capture_output=True, text=True, timeout=30
    ).stdout
    for line in out.splitlines():
        words = line.split()
        if "total" in words and "used" in words:
            total = int(words[words.index("total") + 1].rstrip("K,")) / 1024
            used = int(words[words.index("used") + 1].rstrip("K,")) / 1024
            return f"{used:.0f} MB used of {total:.0f} MB"
    return "n/a"


def wait_rollout(hb: HawkbitServer, rollout: int, status: str, timeout: float) -> float:
    t0 = time.monotonic()
    while hb.rollout(rollout)["status"] != status:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"rollout {rollout}: {hb.rollout(rollout)}")
        time.sleep(0.1)
    return time.monotonic() - t0


def rollout(hb: HawkbitServer, prefix: str, name: str, ds: int, groups: int, **kw: Any) -> int:
    rid = hb.create_rollout(f"{prefix}-{name}", ds, f"controllerId=={prefix}-*", groups, **kw)
    hb.start_rollout(rid)
    return rid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--groups", type=int, default=5)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle measurement")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    print(machine())

    hb = HawkbitServer()
    t0 = time.monotonic()
    hb.start()
    build = hb.build_result
    assert build is not None and hb.pid is not None
    server_rows: list[list[object]] = [
        ["jar build", "built" if build.built else "up to date", f"{build.seconds:.1f} s"],
        ["start → Management API answers", "", f"{hb.start_seconds:.1f} s"],
        ["RSS idle", "", f"{(hb.rss_kib() or 0) / 1024:.0f} MiB"],
        ["Java heap idle", "", heap_used_mb(hb.pid)],
    ]
    try:
        hb.set_polling("00:00:01")
        prefix = f"bench-{uuid.uuid4().hex[:6]}"
        with temp_dir(args.dir, "fleet-bench-") as base, h.package_server() as srv:
            devices = fleet_of(base, hb, srv, args.devices, prefix)
            try:
                procs = [NamespacedUpdater(d.rig) for d in devices]
                for proc in procs:
                    proc.wait_ready(60)
                time.sleep(3.0)  # first polls and configData done

                # -- idle agents ------------------------------------------------------------
                before = [
                    (process_cpu_s(p.popen.pid), d.rig.call("GET", "/healthz")["data"]["fleet"])
                    for p, d in zip(procs, devices, strict=True)
                ]
                time.sleep(args.idle)
                rss, cpu_ms = [], []
                for (cpu0, fleet0), p, d in zip(before, procs, devices, strict=True):
                    fleet1 = d.rig.call("GET", "/healthz")["data"]["fleet"]
                    polls = fleet1["polls"] - fleet0["polls"]
                    cpu_ms.append((process_cpu_s(p.popen.pid) - cpu0) * 1000 / max(polls, 1))
                    rss.append(proc_status_mb(p.popen.pid)["VmRSS"])
                per_hour_default = 3600 / DEFAULT_POLL_S
                agent_rows: list[list[object]] = [
                    [
                        "idle RSS (MB), min / median / max",
                        f"{min(rss):.1f} / {percentile(rss, 50):.1f} / {max(rss):.1f}",
                    ],
                    [
                        "CPU per idle poll (ms), median / max",
                        f"{percentile(cpu_ms, 50):.1f} / {max(cpu_ms):.1f}",
                    ],
                    [
                        "requests per device per hour, idle, default interval (5 min)",
                        f"{per_hour_default:.0f} (one GET of the controller base each)",
                    ],
                    [
                        "... with an action open",
                        f"{2 * per_hour_default:.0f} + feedback "
                        "(the base and deploymentBase per poll; one POST per state change, "
                        "at most one per 10 s while a state lasts)",
                    ],
                    ["... at the tests' interval (1 s)", "3600 (the server's pollingTime)"],
                ]

                # -- rollouts ---------------------------------------------------------------
                good = fleet_package(base / "good.zip", "good").read_bytes()
                ds = hb.release(f"{prefix}-good", "1.1.0", "update-1.1.0.zip", good)
                rid = rollout(hb, prefix, "good", ds, args.groups)
                t_groups = wait_rollout(hb, rid, "finished", 600)
                ok = sum(d.rig.links().current == "1.1.0" for d in devices)

                # the next release to everyone at once (one group)
                nxt = fleet_package(base / "next.zip", "good", version="1.3.0").read_bytes()
                ds_next = hb.release(f"{prefix}-next", "1.3.0", "update-1.3.0.zip", nxt)
                rid_one = rollout(hb, prefix, "one-group", ds_next, 1)
                t_one = wait_rollout(hb, rid_one, "finished", 600)
                ok_one = sum(d.rig.links().current == "1.3.0" for d in devices)

                bad = fleet_package(base / "bad.zip", "bad", version="1.4.0").read_bytes()
                ds_bad = hb.release(f"{prefix}-bad", "1.4.0", "update-1.4.0.zip", bad)
                rid_bad = rollout(hb, prefix, "bad", ds_bad, args.groups, error_percent=20)
                t_paused = wait_rollout(hb, rid_bad, "paused", 600)
                time.sleep(3.0)
                touched = sum(
                    any(
                        s["type"] == "error"
                        for s in hb.action_statuses(
                            d.controller_id,
                            str(max(int(a["id"]) for a in hb.target_actions(d.controller_id))),
                        )
                    )
                    for d in devices
                )
                rollout_rows = [
                    [
                        f"good release, {args.groups} groups of {args.devices // args.groups}, "
                        "next group at 100 % success",
                        f"{t_groups:.1f} s",
                        f"{ok}/{args.devices} on 1.1.0",
                    ],
                    [
                        f"next release, 1 group of {args.devices}",
                        f"{t_one:.1f} s",
                        f"{ok_one}/{args.devices} on 1.3.0",
                    ],
                    [
                        "broken release, error threshold 20 %: start → paused",
                        f"{t_paused:.1f} s",
                        f"{touched} device(s) rolled back, {args.devices - touched} untouched",
                    ],
                ]
            finally:
                for d in devices:
                    d.rig.close()
        server_rows += [
            ["RSS after the rollouts", "", f"{(hb.rss_kib() or 0) / 1024:.0f} MiB"],
            ["Java heap after the rollouts", "", heap_used_mb(hb.pid)],
        ]
    finally:
        hb.stop()
    print(f"\nwhole bench {time.monotonic() - t0:.0f} s\n")
    print("### hawkBit (0.3.0M7, H2 in memory, -XX:TieredStopAtLevel=1 -XX:+UseSerialGC)\n")
    print_table(["what", "", "figure"], server_rows)
    print(f"\n### {args.devices} agents (tope-updater serve, polling every 1 s)\n")
    print_table(["what", "figure"], agent_rows)
    print("\n### Rollouts\n")
    print_table(["rollout", "wall time", "outcome"], rollout_rows)


if __name__ == "__main__":
    main()
