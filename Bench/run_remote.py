#!/usr/bin/env python3
"""Regenerate Bench/results/remote.md: Strata's rbd node beside fio's rbd engine and qemu-img bench
on QEMU's rbd driver, against one one-node Ceph cluster (scripts/ceph-mini: a monitor and a
memstore OSD on this machine), in one run.

Rows (4 KiB, QD32, one queue; the three clients' runs interleaved, rotating who goes first; every
figure the MEDIAN of --runs runs; CPU per I/O is the client process's user+system time (all its
threads, librbd's included) over its I/Os, from wait4):

  randread and randwrite: `strata bench` on an rbd node vs `fio --ioengine=rbd`, and vs
  `qemu-img bench -f rbd` (which cannot do random offsets: it walks the image sequentially, its
  step the request size). Targets: Strata IOPS >= 1.0x fio's; Strata CPU per I/O <= 0.8x
  qemu-img bench's.

The OSD runs on the same machine and takes most of its CPU: the figures compare clients of one
cluster, not Ceph's speed. The iSCSI rows of the issue are not here: the iscsi node is not built.

Usage: Bench/run-remote.sh [--runs N] [--seconds S] [--no-build]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STRATA = ".build/release/strata"
CEPH_DIR = "/tmp/strata-ceph-bench"
CONF = CEPH_DIR + "/ceph.conf"
IMAGE_MIB = 1024


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_with_usage(argv: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> tuple[str, float]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.chdir(REPO)
        os.dup2(write_fd, 1)
        devnull = os.open("/dev/null", os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(read_fd)
        os.execvpe(argv[0], argv, full_env)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd) as reader:
        chunks.append(reader.read())
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {os.waitstatus_to_exitcode(status)}")
    return "".join(chunks), usage.ru_utime + usage.ru_stime


def strata(mode: str, seconds: float) -> tuple[float, float]:
    node = json.dumps({"driver": "rbd", "node-name": "r", "pool": "rbd", "image": "bench", "conf": CONF})
    # No idle polling: completions come from librbd's threads through the queue's eventfd, and a
    # queue spinning between them only burns CPU (measured: 31 vs 28 us of CPU per read).
    out, cpu = run_with_usage([STRATA, "bench", "--json", "--blockdev", node, "--queues", "1", "--depth", "32", "--bs", "4k",
                               "--rw", mode, "--seconds", f"{seconds:g}", "--poll-max-ns", "0"])
    report = json.loads(out)
    return report["iops"], cpu / max(1, report["ops"]) * 1e9


def fio(mode: str, seconds: float) -> tuple[float, float]:
    out, cpu = run_with_usage(["fio", "--name=rbd", "--ioengine=rbd", "--clientname=admin", "--pool=rbd", "--rbdname=bench",
                               f"--rw={mode}", "--bs=4k", "--iodepth=32", "--time_based", f"--runtime={seconds:g}",
                               "--output-format=json"], env={"CEPH_CONF": CONF})
    job = json.loads(out[out.find("{"):])["jobs"][0]
    side = job["read"] if mode == "randread" else job["write"]
    ops = side["total_ios"]
    return side["iops"], cpu / max(1, ops) * 1e9


def qemu_img(mode: str, count: int) -> tuple[float, float]:
    argv = ["qemu-img", "bench", "-f", "rbd", "-d", "32", "-s", "4k", "-c", str(count)]
    if mode == "randwrite":
        argv.append("-w")
    argv.append(f"rbd:rbd/bench:conf={CONF}")
    started = time.monotonic()
    out, cpu = run_with_usage(argv)
    match = re.search(r"Run completed in ([0-9.]+) seconds", out)
    seconds = float(match.group(1)) if match else time.monotonic() - started
    return count / seconds, cpu / count * 1e9


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    log("starting the cluster")
    subprocess.run(["bash", "scripts/ceph-mini", "start"], cwd=REPO, env=dict(os.environ, CEPH_DIR=CEPH_DIR), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run(["rbd", "-c", CONF, "create", "--size", f"{IMAGE_MIB}M", "rbd/bench"], check=True)
        # Fill it, so reads find objects.
        subprocess.run(["rbd", "-c", CONF, "bench", "--io-type", "write", "--io-size", "4M", "--io-total", f"{IMAGE_MIB}M",
                        "--io-pattern", "seq", "rbd/bench"], check=True, stdout=subprocess.DEVNULL)
        rows = []
        for mode in ("randread", "randwrite"):
            figures: dict[str, list[tuple[float, float]]] = {"strata": [], "fio": [], "qemu-img": []}
            count = 0
            for round_index in range(args.runs):
                order = ["strata", "fio", "qemu-img"]
                order = order[round_index % 3:] + order[:round_index % 3]
                for client in order:
                    log(f"{mode}, round {round_index + 1}: {client}")
                    if client == "strata":
                        figures[client].append(strata(mode, args.seconds))
                    elif client == "fio":
                        figures[client].append(fio(mode, args.seconds))
                    else:
                        if count == 0:
                            count = max(1000, int(statistics.median([f[0] for f in figures["strata"]] or [2000]) * args.seconds))
                        figures[client].append(qemu_img(mode, count))
            medians = {client: (statistics.median(f[0] for f in values), statistics.median(f[1] for f in values))
                       for client, values in figures.items()}
            rows.append((mode, figures, medians))
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "unknown")
        out = ["# Remote backends: rbd", "", "Regenerate with `Bench/run-remote.sh`.", "",
               f"- Strata commit: {commit}", f"- Machine: {os.cpu_count()} CPUs, {cpu}, Linux {platform.release()}",
               f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
               f"- Cluster: scripts/ceph-mini (one monitor, one memstore OSD, on this machine); image rbd/bench, {IMAGE_MIB} MiB, filled",
               "", "4 KiB, QD32, one queue. IOPS and CPU ns per I/O (client process, all threads), medians of "
               f"{args.runs} interleaved runs of {args.seconds:g} s (qemu-img bench: a fixed count, sequential offsets).", "",
               "| mode | client | IOPS (runs) | IOPS | CPU ns/I/O | ratio | target | verdict |", "|---|---|---|---|---|---|---|---|"]
        for mode, figures, medians in rows:
            s_iops, s_cpu = medians["strata"]
            f_iops, f_cpu = medians["fio"]
            q_iops, q_cpu = medians["qemu-img"]
            for client in ("strata", "fio", "qemu-img"):
                runs = ", ".join(f"{v[0]:,.0f}" for v in figures[client])
                iops, cpu_ns = medians[client]
                if client == "fio":
                    ratio, target, verdict = f"Strata/fio IOPS {s_iops / f_iops:.2f}", ">= 1.0", "PASS" if s_iops >= f_iops else "FAIL"
                elif client == "qemu-img":
                    ratio, target, verdict = f"Strata/qemu-img CPU {s_cpu / q_cpu:.2f}", "<= 0.8", "PASS" if s_cpu <= 0.8 * q_cpu else "FAIL"
                else:
                    ratio, target, verdict = "-", "-", "-"
                out.append(f"| {mode} | {client} | {runs} | {iops:,.0f} | {cpu_ns:,.0f} | {ratio} | {target} | {verdict} |")
        out += ["", "Commands: " + shlex.join([STRATA, "bench", "--json", "--blockdev", "{\"driver\":\"rbd\",...}", "--queues", "1", "--depth", "32",
                                                "--bs", "4k", "--rw", "MODE", "--seconds", "S", "--poll-max-ns", "0"]) +
                "; `CEPH_CONF=... fio --name=rbd --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench --rw=MODE --bs=4k "
                "--iodepth=32 --time_based --runtime=S`; `qemu-img bench -f rbd -d 32 -s 4k -c N [-w] rbd:rbd/bench:conf=...`.", ""]
        Path(REPO / "Bench/results/remote.md").write_text("\n".join(out))
        log("wrote Bench/results/remote.md")
    finally:
        subprocess.run(["bash", "scripts/ceph-mini", "stop"], cwd=REPO, env=dict(os.environ, CEPH_DIR=CEPH_DIR),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
