#!/usr/bin/env python3
"""Regenerate Bench/results/control.md: the QMP control plane of `strata serve` next to
qemu-storage-daemon 7.2, both started with one monitor socket and nothing else.

  1. Round trip of `query-named-block-nodes` with 100 null-co nodes in the graph: median over
     --calls calls on one connection, each daemon in turn run by run; Strata / QSD time <= 1.0x.
  2. Apply time of a live graph edit under load (Strata only: QEMU has no such command): a 2-queue
     `strata bench` drives an NBD export of a raw file through the nbd client node with --verify
     while 20 `x-insert-filter` (a throttle filter above the exported node) and 20
     `x-remove-filter` go through QMP; median and worst round trip, and the run must end with 0
     failed, 0 lost and 0 verify failures.
  3. What per-node accounting costs: `strata bench` on the null path (1 queue, 4 KiB randread,
     QD32; its default graph, raw over null-co, both nodes accounted) with `--accounting on` and
     `--accounting off`, alternating; on / off IOPS >= 0.9x.

Every figure is the median of --runs runs. Usage: python3 Bench/run_control.py [--runs N] [--calls N]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_core import REPO, STRATA, commit_measured, machine_facts, median  # noqa: E402


class Monitor:
    """A blocking QMP client: one JSON message a line, events skipped."""

    def __init__(self, path: str):
        deadline = time.monotonic() + 20
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        # Buffered reads: an unbuffered readline costs one syscall a byte, which would be the
        # figure measured instead of the daemon.
        self.stream = self.sock.makefile("rb")
        self.read()
        self.execute("qmp_capabilities")

    def read(self) -> dict:
        while True:
            line = self.stream.readline()
            if not line:
                raise RuntimeError("monitor closed the connection")
            if line.strip():
                return json.loads(line)

    def execute(self, command: str, arguments: dict | None = None) -> dict:
        message = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self.read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise RuntimeError(f"{command}: {reply['error']}")
            return reply["return"]


def start(argv: list[str], sock: str, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    return process


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def monitor_args(sock: str) -> list[str]:
    return ["--chardev", f"socket,id=m0,path={sock},server=on,wait=off", "--monitor", "chardev=m0"]


def round_trip(daemon: str, work: Path, calls: int) -> float:
    sock = str(work / f"{daemon}.qmp")
    argv = (["qemu-storage-daemon"] if daemon == "qsd" else [str(REPO / STRATA), "serve", "--queues", "2"]) + monitor_args(sock)
    process = start(argv, sock, work / f"{daemon}.log")
    try:
        qmp = Monitor(sock)
        for index in range(100):
            qmp.execute("blockdev-add", {"driver": "null-co", "node-name": f"n{index}", "size": 1 << 30})
        for _ in range(20):
            qmp.execute("query-named-block-nodes")
        times = []
        for _ in range(calls):
            begin = time.perf_counter_ns()
            nodes = qmp.execute("query-named-block-nodes")
            times.append(time.perf_counter_ns() - begin)
            assert len(nodes) == 100, len(nodes)
        return median(times)
    finally:
        stop(process)


def edits_under_load(work: Path) -> tuple[float, float, dict]:
    image = work / "disk.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(image), "256M"], check=True)
    sock, nbd = str(work / "strata-load.qmp"), str(work / "nbd.sock")
    argv = [str(REPO / STRATA), "serve", "--queues", "2", *monitor_args(sock),
            "--blockdev", json.dumps({"driver": "file", "node-name": "proto", "filename": str(image)}),
            "--blockdev", "driver=raw,node-name=fmt,file=proto", "--object", "throttle-group,id=tg0",
            "--nbd-server", f"addr.type=unix,addr.path={nbd}", "--export", "type=nbd,id=e0,node-name=fmt,name=disk,writable=on"]
    process = start(argv, sock, work / "strata-load.log")
    try:
        qmp = Monitor(sock)
        node = json.dumps({"driver": "nbd", "node-name": "remote", "server": {"type": "unix", "path": nbd}, "export": "disk"})
        bench = subprocess.Popen([str(REPO / STRATA), "bench", "--blockdev", node, "--queues", "2", "--depth", "16", "--rw", "randrw",
                                  "--bs", "4k", "--verify", "--seconds", "6", "--json"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1)
        times = []
        for index in range(20):
            for command, arguments in (("x-insert-filter", {"above": "fmt", "filter": {"driver": "throttle", "node-name": f"t{index}",
                                                                                         "throttle-group": "tg0"}}),
                                       ("x-remove-filter", {"node-name": f"t{index}"})):
                begin = time.perf_counter_ns()
                qmp.execute(command, arguments)
                times.append(time.perf_counter_ns() - begin)
        output, _ = bench.communicate(timeout=60)
        report = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
        return median(times), max(times), report
    finally:
        stop(process)


ACCOUNTING_ARGS = ["bench", "--json", "--queues", "1", "--depth", "32", "--bs", "4k", "--rw", "randread", "--seconds", "3"]


def accounting_iops(mode: str) -> float:
    output = subprocess.run([str(REPO / STRATA), *ACCOUNTING_ARGS, "--accounting", mode], check=True, capture_output=True, text=True).stdout
    report = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    if report["failed"]:
        raise SystemExit(f"strata bench --accounting {mode}: {report['failed']} failed requests")
    return float(report["iops"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--accounting-runs", type=int, default=5, help="on/off pairs for row 3 (the null path is noisy here)")
    parser.add_argument("--out", default=str(REPO / "Bench/results/control.md"))
    args = parser.parse_args()
    strata_rt, qsd_rt, apply_median, apply_worst, reports = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="strata-control-") as directory:
        work = Path(directory)
        for run in range(args.runs):
            for daemon in (("strata", "qsd") if run % 2 == 0 else ("qsd", "strata")):
                value = round_trip(daemon, work, args.calls)
                (strata_rt if daemon == "strata" else qsd_rt).append(value)
                print(f"run {run + 1}: {daemon} query-named-block-nodes {value / 1000:.1f} us", flush=True)
            typical, worst, report = edits_under_load(work)
            apply_median.append(typical)
            apply_worst.append(worst)
            reports.append(report)
            print(f"run {run + 1}: x-insert/remove-filter under load median {typical / 1000:.0f} us, worst {worst / 1000:.0f} us; "
                  f"failed {report['failed']} lost {report['lost']} verify {report['verify_failures']}", flush=True)
    accounting = {"on": [], "off": []}
    for run in range(args.accounting_runs):
        for mode in (("on", "off") if run % 2 == 0 else ("off", "on")):
            accounting[mode].append(accounting_iops(mode))
            print(f"run {run + 1}: null path, accounting {mode}: {accounting[mode][-1]:,.0f} IOPS", flush=True)
    accounting_ratio = median(accounting["on"]) / median(accounting["off"])
    ratio = median(strata_rt) / median(qsd_rt)
    clean = all(r["failed"] == 0 and r["lost"] == 0 and r["verify_failures"] == 0 for r in reports)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    facts = machine_facts()
    lines = [
        "# Control plane: `strata serve` next to qemu-storage-daemon over QMP", "",
        f"Regenerated by `bash Bench/run-control.sh` on {now}; medians of {args.runs} runs (daemons alternating), release build of "
        f"Strata commit {commit_measured()}.", "",
        "| row | measure | Strata | peer | ratio | target | result |", "|---|---|---|---|---|---|---|",
        f"| 1 | `query-named-block-nodes` round trip, 100 nodes (median of {args.calls} calls) | {median(strata_rt) / 1000:,.1f} us | "
        f"{median(qsd_rt) / 1000:,.1f} us | {ratio:.2f}x | <= 1.0x | {'PASS' if ratio <= 1.0 else 'FAIL'} |",
        f"| 2a | `x-insert-filter`/`x-remove-filter` round trip under a 2-queue verified NBD load: median | {median(apply_median) / 1000:,.0f} us "
        "| - | - | - | - |",
        f"| 2b | Same runs: worst of 40 edits | {median(apply_worst) / 1000:,.0f} us | - | - | - | - |",
        f"| 2c | Same runs: failed, lost, verify failures | {sum(r['failed'] for r in reports)}, {sum(r['lost'] for r in reports)}, "
        f"{sum(r['verify_failures'] for r in reports)} | - | - | 0 | {'PASS' if clean else 'FAIL'} |",
        f"| 3 | Null-path IOPS, accounting on every node / off (median of {args.accounting_runs}) | {median(accounting['on']):,.0f} IOPS | "
        f"{median(accounting['off']):,.0f} IOPS | {accounting_ratio:.2f}x | >= 0.9x | {'PASS' if accounting_ratio >= 0.9 else 'FAIL'} |", "",
        "## Runs", "",
        f"- Strata round trips (us): {', '.join(f'{v / 1000:.1f}' for v in strata_rt)}",
        f"- qemu-storage-daemon round trips (us): {', '.join(f'{v / 1000:.1f}' for v in qsd_rt)}",
        f"- edit round trips under load, median / worst (us): {', '.join(f'{a / 1000:.0f}/{w / 1000:.0f}' for a, w in zip(apply_median, apply_worst))}",
        "- load IOPS per run: " + ", ".join(f"{r['iops']:,.0f}" for r in reports),
        "- null path with accounting on (IOPS): " + ", ".join(f"{v:,.0f}" for v in accounting["on"]),
        "- null path with accounting off (IOPS): " + ", ".join(f"{v:,.0f}" for v in accounting["off"]), "",
        "## Commands", "",
        f"- `{STRATA} serve --queues 2 --chardev socket,id=m0,path=SOCK,server=on,wait=off --monitor chardev=m0`, then 100 x "
        "`blockdev-add driver=null-co`; `qemu-storage-daemon` with the same monitor options.",
        f"- Row 2: `{STRATA} serve` with a file+raw graph exported over NBD, loaded by `{STRATA} bench --blockdev '{{\"driver\":\"nbd\",...}}' "
        "--queues 2 --depth 16 --rw randrw --bs 4k --verify --seconds 6 --json`.",
        f"- Row 3: `{STRATA} {shlex.join(ACCOUNTING_ARGS)} --accounting on` and `... --accounting off`.", "",
        "## Machine", "",
        *(f"- {key}: {value}" for key, value in facts.items()), "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
