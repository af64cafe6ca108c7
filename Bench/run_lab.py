#!/usr/bin/env python3
"""Regenerate Bench/results/lab.md (and the example's files under Bench/results/lab/): the
scheduling-policy lab's figures.

Rows (every figure is the MEDIAN of --runs runs; the policies' runs are interleaved, each round
in a rotated order, so drift on the machine hits all alike):

  1. Policy overhead per request on the null path: `strata bench` (one queue, QD32, 4 KiB random
     reads) on null-co under each policy filter (max-in-flight 8, one tenant, limits that never
     bind, so every policy runs its bookkeeping), CPU time per request minus fifo's.
     Target: each policy <= 100 ns more than fifo. For scale: null-co without a filter, and a
     throttle filter whose limits never bind (it too suspends every request).
  2. Heap allocations per request in steady state through each policy filter (strata-alloc-count
     --policy P, under the malloc interposer). Target: 0.
  3. The 10-million-request scenario (examples/lab/lab-10m.json: 4 tenants, 6 policies, at least
     10 million requests under each) on simulated time: wall-clock seconds of `strata lab`.
     Target: <= 30 s. Two runs' JSON reports must be identical (determinism).
  4. The example (examples/lab/mclock-three-tenants.json): its table, written with the plots to
     Bench/results/lab/ as they came out.

Usage: Bench/run-lab.sh [--runs N] [--seconds S] [--quick] [--no-build]
  (python3 Bench/run_lab.py with the same options once the release binaries exist)
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STRATA = ".build/release/strata"
ALLOC_COUNT = ".build/release/strata-alloc-count"
INTERPOSER = ".build/release/libMallocInterposerSwift.so"
POLICIES = ["fifo", "leaky-bucket", "token-bucket", "mclock", "deadline", "wfq"]
# Per-tenant options that make each policy do its work without ever holding a request back.
NON_BINDING = {
    "fifo": {},
    "leaky-bucket": {"iops-total": 1_000_000_000},
    "token-bucket": {"iops": 1_000_000_000},
    "mclock": {"reservation": 1, "weight": 1},
    "deadline": {},
    "wfq": {"weight": 1},
}


class RunError(Exception):
    pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(argv, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RunError(f"exit status {proc.returncode}: {shlex.join(argv)}\n{proc.stderr[-1500:]}\n{proc.stdout[-500:]}")
    return proc


def bench_argv(node: dict | None, seconds: float) -> list[str]:
    argv = [STRATA, "bench", "--json", "--seconds", f"{seconds:g}", "--queues", "1", "--depth", "32", "--rw", "randread",
            "--blockdev", json.dumps({"driver": "null-co", "node-name": "n", "size": "1G"})]
    if node is not None:
        argv += ["--blockdev", json.dumps(node)]
    return argv


def policy_node(policy: str) -> dict:
    return {"driver": policy, "node-name": "p", "file": "n", "max-in-flight": 8, "tenants": [NON_BINDING[policy]]}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "unknown")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return (f"- Strata commit: {commit}{' (with uncommitted changes)' if dirty else ''}\n"
            f"- Machine: {os.cpu_count()} CPUs, {cpu}, Linux {platform.release()}\n"
            f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--out", default="Bench/results/lab.md")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds = 1, 1
    for binary in (STRATA, ALLOC_COUNT, INTERPOSER):
        if not (REPO / binary).exists():
            log(f"missing {binary}: run Bench/run-lab.sh")
            return 2

    out: list[str] = ["# The scheduling-policy lab", "", "Regenerate with `Bench/run-lab.sh` (this file, and the example's table, JSON, CSV",
                      "and plots in Bench/results/lab/).", "", machine()]

    # Row 1: overhead per request.
    variants: list[tuple[str, dict | None]] = [("null-co, no filter", None),
                                                ("throttle, limits never bind", {"driver": "throttle", "node-name": "p", "file": "n",
                                                                                  "limits": {"iops-total": 1_000_000_000}})]
    variants += [(policy, policy_node(policy)) for policy in POLICIES]
    cpu: dict[str, list[float]] = {name: [] for name, _ in variants}
    iops: dict[str, list[float]] = {name: [] for name, _ in variants}
    for round_index in range(args.runs):
        order = variants[round_index % len(variants):] + variants[:round_index % len(variants)]
        for name, node in order:
            log(f"row 1, round {round_index + 1}: {name}")
            report = json.loads(run(bench_argv(node, args.seconds), timeout=args.seconds * 10 + 60).stdout)
            if report.get("failed", 0) != 0:
                raise RunError(f"{name}: {report['failed']} requests failed")
            cpu[name].append(report["cpu_ns_per_op"])
            iops[name].append(report["iops"])
    fifo = statistics.median(cpu["fifo"])
    out += ["## 1. Policy overhead per request, null path", "",
            f"`{shlex.join(bench_argv(policy_node('mclock'), args.seconds))}` (and the same with each policy; one tenant with "
            f"limits that never bind: {json.dumps(NON_BINDING)}). CPU time per request from the bench's own accounting; medians of "
            f"{args.runs} interleaved runs.", "",
            "| graph | CPU ns per request (runs) | median | vs fifo | IOPS (median) | target | verdict |", "|---|---|---|---|---|---|---|"]
    verdicts: list[bool] = []
    for name, _ in variants:
        value = statistics.median(cpu[name])
        runs = ", ".join(f"{v:.0f}" for v in cpu[name])
        if name in POLICIES and name != "fifo":
            delta = value - fifo
            ok = delta <= 100
            verdicts.append(ok)
            out.append(f"| {name} | {runs} | {value:.0f} | {delta:+.0f} ns | {statistics.median(iops[name]):,.0f} | <= +100 ns | {'PASS' if ok else 'FAIL'} |")
        else:
            out.append(f"| {name} | {runs} | {value:.0f} | {value - fifo:+.0f} ns | {statistics.median(iops[name]):,.0f} | - | - |")
    out += ["", "Every filter that suspends requests (throttle with limits, any policy) pays the engine's suspending path: the "
            "request leaves the synchronous route and runs as an async call chain on its queue. The policies' own cost is the "
            "difference from fifo.", ""]

    # Row 2: allocations.
    out += ["## 2. Heap allocations per request through each policy filter", "",
            f"`LD_PRELOAD={INTERPOSER} {ALLOC_COUNT} --policy P --ops 200000` (null-co -> raw -> P -> throttle, one queue).", "",
            "| policy | allocations per request | target | verdict |", "|---|---|---|---|"]
    for policy in POLICIES:
        log(f"row 2: {policy}")
        report = json.loads(run([ALLOC_COUNT, "--policy", policy, "--ops", "200000"], timeout=300, env={"LD_PRELOAD": INTERPOSER}).stdout.strip().splitlines()[-1])
        ok = report["mallocs_per_request"] == 0 and report["failed"] == 0
        verdicts.append(ok)
        out.append(f"| {policy} | {report['mallocs_per_request']} | 0 | {'PASS' if ok else 'FAIL'} |")
    out.append("")

    # Row 3: the 10M scenario.
    argv = [STRATA, "lab", "examples/lab/lab-10m.json", "--no-progress", "--json"]
    walls: list[float] = []
    digests: set[str] = set()
    least = None
    for round_index in range(args.runs if not args.quick else 1):
        log(f"row 3, run {round_index + 1}")
        started = time.monotonic()
        proc = run(argv, timeout=600)
        walls.append(time.monotonic() - started)
        digests.add(hashlib.sha256(proc.stdout.encode()).hexdigest())
        report = json.loads(proc.stdout)
        least = min(sum(t["completed"] for t in p["tenants"]) for p in report["policies"])
    wall = statistics.median(walls)
    ok = wall <= 30 and least is not None and least >= 10_000_000 and len(digests) == 1
    verdicts.append(ok)
    out += ["## 3. Ten million requests under each of six policies, simulated time", "",
            f"`{shlex.join(argv)}`: 4 tenants (two closed loops, a Poisson and a bursty open loop; a reservation, a limit and "
            f"weights) on a sim device of 16 parallel exponential servers; the policies run side by side, one per core.", "",
            "| runs (s) | median wall s | fewest requests under one policy | identical JSON reports | target | verdict |",
            "|---|---|---|---|---|---|",
            f"| {', '.join(f'{w:.1f}' for w in walls)} | {wall:.1f} | {least:,} | {'yes' if len(digests) == 1 else 'NO'} | <= 30 s, >= 10M each, identical | {'PASS' if ok else 'FAIL'} |", ""]

    # Row 4: the example.
    example = [STRATA, "lab", "examples/lab/mclock-three-tenants.json", "--no-progress", "--output", "Bench/results/lab"]
    log("row 4: the example")
    table = run(example, timeout=600).stdout
    out += ["## 4. The example: examples/lab/mclock-three-tenants.json", "", f"`{shlex.join(example)}`", "", "```", table.rstrip(), "```", "",
            "![latency CDF](lab/latency-cdf.svg)", "", "![throughput over time](lab/throughput.svg)", ""]

    Path(REPO / args.out).write_text("\n".join(out))
    log(f"wrote {args.out}: {'all PASS' if all(verdicts) else 'some FAIL'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RunError as error:
        log(f"run failed: {error}")
        sys.exit(1)
