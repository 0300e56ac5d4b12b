"""Crash trials: kill the real updater at random durable steps, restart it, check invariants.

Each trial is one :func:`tests.crash.harness.run_trial`: a fresh device (install root with
a factory snapshot, state dir, package, mock device-api), ``tope-updater serve`` started as a
subprocess with ``TOPE_UPDATER_CRASH_AT=<point>#<hit>`` (or SIGKILLed by the harness at a
random moment of a throttled download), restarted without it, driven to the end, checked.

The kill is drawn (seeded) from every (point, hit) of :data:`tests.crash.harness.KILL_POINTS`
for the good and the bad (rolling back) update, or, with probability ``--mid-download``, a
random moment of a ~3 s throttled download. Prints a summary table and one line per kill
point; exits 1 if any trial broke an invariant. Failed trials keep their directory (logs,
journal, disk) under ``--keep-dir``.

Usage::

    .venv/bin/python -m bench.crash_trials --trials 1000 --seed 1 --workers 3
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import attrs
import structlog

# Runnable as `python bench/crash_trials.py` too (not only `python -m bench.crash_trials`).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.crash import harness as h
from tests.support.package_server import ThreadedPackageServer


@attrs.frozen
class Plan:
    """One trial to run: the scenario and where to kill."""

    index: int
    scenario: str
    kill: h.KillPoint


def make_plans(trials: int, seed: int, mid_download: float) -> list[Plan]:
    """The seeded trial list; deterministic kills are drawn in shuffled rounds so that every
    (point, hit) is covered once before any repeats."""
    rng = random.Random(seed)
    deterministic = [(n, k) for n in ("good", "bad") for k in h.kill_list(h.KILL_POINTS[n])]
    pool: list[tuple[str, h.KillPoint]] = []
    plans = []
    for i in range(trials):
        if rng.random() < mid_download:
            kill = h.KillPoint("delay", delay_s=round(rng.uniform(0.2, 2.6), 2))
            plans.append(Plan(i, "good-mid", kill))
            continue
        if not pool:
            pool = deterministic[:]
            rng.shuffle(pool)
        name, kill = pool.pop()
        plans.append(Plan(i, name, kill))
    return plans


def run_plan(plan: Plan, server: ThreadedPackageServer, work: Path, keep: Path) -> h.TrialResult:
    """Run one trial in its own directory; keep the directory only if the trial failed."""
    base = work / f"t{plan.index:05d}"
    base.mkdir()
    if plan.scenario == "good-mid":
        sc = h.scenario("good", blob_size=h.MID_DOWNLOAD_BLOB, seed=plan.index)
        rig = h.Rig(base, sc, server, behaviour=h.MID_DOWNLOAD_RATE)
    else:
        rig = h.Rig(base, h.scenario(plan.scenario), server)
    try:
        result = h.run_trial(rig, plan.kill)
    finally:
        rig.close()
    if result.ok:
        shutil.rmtree(base, ignore_errors=True)
    else:
        shutil.move(str(base), keep / base.name)
    return result


def _not_reached(result: h.TrialResult) -> bool:
    return not result.killed and bool(result.error) and "never reached" in str(result.error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=3, help="trials run in parallel")
    parser.add_argument(
        "--mid-download", type=float, default=0.2, help="share of random mid-download kills"
    )
    parser.add_argument("--keep-dir", type=Path, default=Path("var/crash-trials-failed"))
    args = parser.parse_args(argv)
    # The harness calls updater code in-process (init_layout): keep its info lines quiet.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    plans = make_plans(args.trials, args.seed, args.mid_download)
    args.keep_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="crash-trials-"))
    results: list[tuple[Plan, h.TrialResult]] = []
    started = time.monotonic()
    with (
        h.package_server() as server,
        concurrent.futures.ThreadPoolExecutor(args.workers) as pool,
    ):
        futures = {pool.submit(run_plan, p, server, work, args.keep_dir): p for p in plans}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            plan = futures[future]
            result = future.result()
            results.append((plan, result))
            if not result.ok and not _not_reached(result):
                print(f"FAIL #{plan.index} {plan.scenario} {plan.kill}: {result.error}")
            if done % 50 == 0 or done == len(plans):
                rate = done / (time.monotonic() - started)
                print(f"... {done}/{len(plans)} trials, {rate:.2f}/s", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started

    failures = [(p, r) for p, r in results if not r.ok and not _not_reached(r)]
    missed = [(p, r) for p, r in results if _not_reached(r)]
    mid = [r for p, r in results if p.scenario == "good-mid"]
    resumed = [r for r in mid if r.resumed_from]
    points = {r.kill.point for _, r in results if r.killed and r.kill.point != "delay"}
    pairs = {(p.scenario, str(r.kill)) for p, r in results if r.killed and p.scenario != "good-mid"}
    pairs_total = sum(len(h.kill_list(h.KILL_POINTS[n])) for n in ("good", "bad"))
    names_total = len(set().union(*h.KILL_POINTS.values()))
    per_point: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for _, r in results:
        key = r.kill.point
        per_point[key][0] += 1
        per_point[key][1] += 0 if r.ok or _not_reached(r) else 1

    print()
    print(f"crash trials   seed {args.seed}   workers {args.workers}   {elapsed:.0f} s")
    print("-" * 60)
    rows = [
        ("trials run", len(results)),
        ("  killed and recovered", sum(1 for _, r in results if r.killed and r.ok)),
        ("  kill point not reached (not counted)", len(missed)),
        ("kill points covered (names)", f"{len(points)} of {names_total}"),
        ("(scenario, point, hit) kills covered", f"{len(pairs)} of {pairs_total}"),
        ("mid-download kills", len(mid)),
        ("  resumed with Range", len(resumed)),
        ("invariant failures", len(failures)),
        ("mean trial time (s)", f"{sum(r.seconds for _, r in results) / max(1, len(results)):.2f}"),
    ]
    for label, value in rows:
        print(f"{label:<40} {value}")
    print("-" * 60)
    print(f"{'kill point':<34} {'trials':>7} {'failures':>9}")
    for point in sorted(per_point):
        n, bad = per_point[point]
        print(f"{point:<34} {n:>7} {bad:>9}")
    for plan, result in failures[:20]:
        print(f"FAILED #{plan.index} {plan.scenario} {result.kill}: {result.error}")
    if failures:
        print(f"failed trial directories kept in {args.keep_dir}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
