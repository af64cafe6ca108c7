#!/usr/bin/env python3
"""Regenerate Bench/results/vhost.md: the vhost-user-blk export next to qemu-storage-daemon's.

Both back ends serve the same node, and the same front end drives them: `strata bench --vhost-user
SOCKET` (release build), a separate process sharing memory over vhost-user as QEMU would. Daemons
alternate run by run; every figure is the MEDIAN of --runs runs.

  1. null-co, 4 KiB random reads, QD32, 1 queue: IOPS, Strata / QSD >= 2x.
  2. the same on 2 queues: Strata 2 queues / Strata 1 queue >= 1.8x (QSD's one iothread for comparison).
  3. null-co, 4 KiB random reads, QD1, 1 queue: mean latency, Strata / QSD <= 0.8x.
  4. a 1 GiB raw file with cache=none (O_DIRECT), 4 KiB random reads, QD32 and QD1, 1 and 2 queues:
     IOPS and mean latency, for the record.
  5. heap allocations per request on the export path, front end and back end together
     (`strata-alloc-count --vhost-user`, malloc interposer): 0.
  6. `strata bench` on `null-aio` (every request completed through the queue's ring) against
     `qemu-img bench -d 32 -t none` on null-aio: IOPS, Strata / qemu-img >= 3x.
  7. the NBD server next to nbdkit on the same 1 GiB raw file (page cache warm), fio's nbd engine
     over a Unix socket: 4 KiB random reads at QD1, mean latency, Strata / nbdkit <= 1.0x; and at
     QD32, the server's CPU time per I/O, Strata / nbdkit <= 0.6x.

Daemons: `.build/release/strata serve --queues 2 --blockdev ... --export type=vhost-user-blk,...,num-queues=2`
and `qemu-storage-daemon --blockdev ... --export type=vhost-user-blk,...,num-queues=2`.

Usage: python3 Bench/run_vhost.py [--runs N] [--seconds S] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_core import REPO, STRATA, RunError, commit_measured, machine_facts, median, log, tail  # noqa: E402

WORK = REPO / "Bench" / "work" / "vhost"
ENV = dict(os.environ, PATH="/usr/bin:/usr/local/bin:" + os.environ.get("PATH", "/bin"))


def placement(queues: int) -> tuple[list[int], list[int]]:
    """CPUs for the front end's and the back end's queues: apart when the machine has enough
    (a spinning or busy back end must not share a CPU with the front end that feeds it), else
    shared, one front-end and one back-end queue per CPU."""
    online = os.cpu_count() or 1
    front = list(range(min(queues, online)))
    if online >= 2 * queues:
        return front, list(range(queues, 2 * queues))
    return front, front


def daemon_argv(key: str, node: str, socket: Path, cpus: list[int]) -> list[str]:
    export = f"type=vhost-user-blk,id=v0,node-name=disk,addr.type=unix,addr.path={socket},writable=on,num-queues=2"
    if node == "null":
        blockdev = ["--blockdev", '{"driver":"null-co","node-name":"disk","size":1073741824}']
    else:
        image = WORK / "disk.raw"
        blockdev = ["--blockdev", json.dumps({"driver": "file", "node-name": "disk", "filename": str(image),
                                              "cache": {"direct": True, "no-flush": False}})]
    cpu_list = ",".join(map(str, cpus))
    if key == "strata":
        return [str(REPO / STRATA), "serve", "--queues", "2", "--cpus", cpu_list] + blockdev + ["--export", export]
    return ["taskset", "-c", cpu_list, "qemu-storage-daemon"] + blockdev + ["--export", export]


def measure(key: str, node: str, queues: int, depth: int, seconds: float) -> dict:
    socket = WORK / f"{key}.sock"
    if socket.exists():
        socket.unlink()
    front_cpus, back_cpus = placement(queues)
    argv = daemon_argv(key, node, socket, back_cpus)
    proc = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while not socket.exists():
            if proc.poll() is not None or time.time() > deadline:
                raise RunError(f"{key} did not listen: {tail(proc.stderr.read() if proc.stderr else '')}")
            time.sleep(0.02)
        bench = [str(REPO / STRATA), "bench", "--vhost-user", str(socket), "--queues", str(queues), "--depth", str(depth),
                 "--rw", "randread", "--bs", "4k", "--seconds", str(seconds), "--json",
                 "--cpus", ",".join(map(str, front_cpus))]
        back_before, started = cpu_ns(proc.pid), time.monotonic()
        out = subprocess.run(bench, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=seconds + 60)
        back_cpus = (cpu_ns(proc.pid) - back_before) / 1e9 / (time.monotonic() - started)
        if out.returncode != 0:
            raise RunError(f"bench against {key} failed: {tail(out.stdout + out.stderr)}")
        report = json.loads(out.stdout.strip().splitlines()[-1])
        # CPUs each side kept busy: the front end's from its own report, the back end's from /proc
        # over the bench process's whole life (its start and handshake included, so slightly low).
        front_cpus_used = report["cpu_ns_per_op"] * report["iops"] / 1e9
        return {"iops": report["iops"], "mean_ns": report["latency_ns"]["mean"], "p99_ns": report["latency_ns"]["p99"],
                "front_cpus": front_cpus_used, "back_cpus": back_cpus}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def cache_round_trip_ns() -> float:
    """Mean cache-line round trip between the CPUs row 1 puts the front end and the back end on."""
    front, back = (c[0] for c in placement(1))
    out = subprocess.run([str(REPO / ".build" / "release" / "strata-ring-floor"), "--cache-round-trip", f"{front},{back}"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RunError(f"strata-ring-floor --cache-round-trip failed: {tail(out.stdout + out.stderr)}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["cache_round_trip_ns"])


def cpu_split_ns(pid: int) -> tuple[float, float]:
    """(user, system) CPU time of a process so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = 1e9 / os.sysconf("SC_CLK_TCK")
    return int(fields[11]) * tick, int(fields[12]) * tick


def cpu_ns(pid: int) -> float:
    return sum(cpu_split_ns(pid))


def nbd_run(key: str, image: Path, depth: int, seconds: float) -> tuple[float, float, float]:
    """One fio run against one NBD server: (mean latency ns, server CPU ns per I/O, of which in the kernel)."""
    socket = WORK / f"nbd-{key}.sock"
    if socket.exists():
        socket.unlink()
    # The client (fio, one job) on the first CPU and the server on the next, as placement() does.
    client_cpus, server_cpus = (str(c[0]) for c in placement(1))
    argv = ([str(REPO / STRATA), "serve", "--image", str(image), "--format", "raw", "--read-only", "--nbd", f"unix:{socket}",
             "--cpus", server_cpus]
            if key == "strata" else ["taskset", "-c", server_cpus, "nbdkit", "-f", "-r", "-U", str(socket), "file", str(image)])
    proc = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while not socket.exists():
            if proc.poll() is not None or time.time() > deadline:
                raise RunError(f"{key} did not listen: {tail(proc.stderr.read() if proc.stderr else '')}")
            time.sleep(0.02)
        before = cpu_split_ns(proc.pid)
        out = subprocess.run(["taskset", "-c", client_cpus, "fio", "--name=r", "--ioengine=nbd", f"--uri=nbd+unix:///?socket={socket}", "--rw=randread", "--bs=4k",
                              f"--iodepth={depth}", f"--runtime={seconds:g}", "--time_based", "--output-format=json"],
                             cwd=REPO, env=ENV, capture_output=True, text=True, timeout=seconds + 60)
        after = cpu_split_ns(proc.pid)
        if out.returncode != 0:
            raise RunError(f"fio against {key} failed: {tail(out.stdout + out.stderr)}")
        read = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]["read"]
        ios = max(1, read["total_ios"])
        return read["lat_ns"]["mean"], (sum(after) - sum(before)) / ios, (after[1] - before[1]) / ios
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--out", default=str(REPO / "Bench" / "results" / "vhost.md"))
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    image = WORK / "disk.raw"
    if not image.exists() or image.stat().st_size != 1 << 30:
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(image), "1G"], check=True, env=ENV)
        subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 7 0 1G", str(image)], check=True, env=ENV, capture_output=True)
    cases = [("null", 1, 32), ("null", 2, 32), ("null", 1, 1), ("file", 1, 32), ("file", 2, 32), ("file", 1, 1), ("file", 2, 1)]
    results: dict[tuple, dict[str, list[dict]]] = {case: {"strata": [], "qsd": []} for case in cases}
    round_trips: list[float] = []
    for run in range(args.runs):
        for case in cases:
            if case == ("null", 1, 32):
                round_trips.append(cache_round_trip_ns())
            order = ["strata", "qsd"] if (run + cases.index(case)) % 2 == 0 else ["qsd", "strata"]
            for key in order:
                log(f"run {run + 1}/{args.runs}: {key} {case}")
                results[case][key].append(measure(key, case[0], case[1], case[2], args.seconds))

    def med(case: tuple, key: str, field: str) -> float:
        return median([r[field] for r in results[case][key]])

    def iops(value: float) -> str:
        return f"{value:,.0f} IOPS"

    def micros(value: float) -> str:
        return f"{value / 1000:.1f} us"

    rows = []
    s1, q1 = med(("null", 1, 32), "strata", "iops"), med(("null", 1, 32), "qsd", "iops")
    rows.append(("1", "null-co, 4 KiB random reads, QD32, 1 queue: IOPS", iops(s1), iops(q1), s1 / q1, ">= 2x", s1 / q1 >= 2))
    pairs = ", ".join(f"{rt:,.0f} ns: Strata {st['iops'] / 1e6:.2f}M, QSD {qs['iops'] / 1e6:.2f}M"
                      for rt, st, qs in zip(round_trips, results[("null", 1, 32)]["strata"], results[("null", 1, 32)]["qsd"]))
    rows.append(("1'", "Same runs: the cache-line round trip between the front end's and the back end's CPU, measured before each "
                 f"pair (strata-ring-floor --cache-round-trip; it moves with where the hypervisor puts the vCPUs): {pairs}",
                 f"{median(round_trips):,.0f} ns", "-", None, "-", None))
    s2, q2 = med(("null", 2, 32), "strata", "iops"), med(("null", 2, 32), "qsd", "iops")
    rows.append(("2", "null-co, QD32 per queue, 2 queues: IOPS (ratio: Strata 2 queues / Strata 1 queue)", iops(s2), iops(q2), s2 / s1,
                 ">= 1.8x", s2 / s1 >= 1.8))
    cpus = {q: (med(("null", q, 32), "strata", "front_cpus"), med(("null", q, 32), "strata", "back_cpus")) for q in (1, 2)}
    rows.append(("2'", f"Same runs: CPUs Strata's front end + back end kept busy, 1 queue / 2 queues (the machine has {os.cpu_count()})",
                 f"{cpus[1][0]:.2f} + {cpus[1][1]:.2f} / {cpus[2][0]:.2f} + {cpus[2][1]:.2f}", "-", None, "-", None))
    l1, lq = med(("null", 1, 1), "strata", "mean_ns"), med(("null", 1, 1), "qsd", "mean_ns")
    rows.append(("3", "null-co, 4 KiB random reads, QD1, 1 queue: mean latency", micros(l1), micros(lq), l1 / lq, "<= 0.8x", l1 / lq <= 0.8))
    for case, label in ((("file", 1, 32), "4a"), (("file", 2, 32), "4b")):
        s, q = med(case, "strata", "iops"), med(case, "qsd", "iops")
        rows.append((label, f"1 GiB raw file, cache=none, QD32, {case[1]} queue(s): IOPS", iops(s), iops(q), s / q, "-", None))
    for case, label in ((("file", 1, 1), "4c"), (("file", 2, 1), "4d")):
        s, q = med(case, "strata", "mean_ns"), med(case, "qsd", "mean_ns")
        rows.append((label, f"1 GiB raw file, cache=none, QD1, {case[1]} queue(s): mean latency", micros(s), micros(q), s / q, "-", None))

    allocations = []
    for extra in ([], ["--image", str(image)]):
        counted = subprocess.run([str(REPO / ".build/release/strata-alloc-count"), "--vhost-user", "--ops", "50000"] + extra, cwd=REPO,
                                 env=dict(ENV, LD_PRELOAD=str(REPO / ".build/release/libMallocInterposerSwift.so")),
                                 capture_output=True, text=True, timeout=600)
        if counted.returncode != 0:
            raise RunError(f"strata-alloc-count failed: {tail(counted.stdout + counted.stderr)}")
        allocations.append(json.loads(counted.stdout.strip().splitlines()[-1]))
    # (mallocs(2N) - mallocs(N)) / N: one allocation per request reads 1, one per batch of 8 reads
    # 0.125. The process's one-time allocations (about 370, threads and first growth) vary by a few
    # dozen between the two runs, so "none" reads within +-0.001 of 0 at N = 50,000.
    per_request = [a["mallocs_per_request"] for a in allocations]
    counts = "; ".join(f"{a['mallocs_n']} mallocs for {a['ops_n']:,} requests, {a['mallocs_2n']} for {a['ops_2n']:,}" for a in allocations)
    rows.append(("5", f"Heap allocations per request on the export path (front and back end; null-co, then a file): {counts}",
                 f"{per_request[0]:g} / {per_request[1]:g}", "-", 0, "0 (within +-0.001)", max(abs(v) for v in per_request) < 0.001))
    aio_strata, aio_qemu, aio_split = [], [], []
    aio_floor: dict[int, list[float]] = {4: [], 32: []}
    for run in range(args.runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([str(REPO / STRATA), "bench", "--blockdev", '{"driver":"null-aio","node-name":"n","size":1073741824}',
                              "--queues", "1", "--depth", "32", "--seconds", str(args.seconds), "--json"],
                             cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        report = json.loads(out.stdout.strip().splitlines()[-1])
        aio_strata.append(report["iops"])
        ops = max(1, report["ops"])
        aio_split.append(((after.ru_utime - before.ru_utime) / ops * 1e9, (after.ru_stime - before.ru_stime) / ops * 1e9))
        count = 2_000_000
        started = time.monotonic()
        subprocess.run(["qemu-img", "bench", "-c", str(count), "-d", "32", "-t", "none", "--image-opts",
                        "driver=null-aio,size=1073741824"], check=True, env=ENV, capture_output=True, timeout=120)
        aio_qemu.append(count / (time.monotonic() - started))
        for batch in (4, 32):
            floor = subprocess.run([str(REPO / ".build" / "release" / "strata-ring-floor"), "--depth", "32", "--seconds", str(args.seconds),
                                    "--submit-batch", str(batch)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
            if floor.returncode != 0:
                raise RunError(f"strata-ring-floor failed: {tail(floor.stdout + floor.stderr)}")
            aio_floor[batch].append(json.loads(floor.stdout.strip().splitlines()[-1])["nops_per_second"])
    sa, qa = median(aio_strata), median(aio_qemu)
    rows.append(("6", "null-aio (completed through the ring), 4 KiB reads, QD32, 1 queue: IOPS (peer: qemu-img bench)", iops(sa), iops(qa),
                 sa / qa, ">= 3x", sa / qa >= 3))
    user_ns, sys_ns = median(u for u, _ in aio_split), median(k for _, k in aio_split)
    rows.append(("6'", "Same runs: Strata's CPU per request, user + kernel (the 3x target allows 1e9 / (3 x qemu-img's IOPS))",
                 f"{user_ns:,.0f} + {sys_ns:,.0f} ns", f"{1e9 / (3 * qa):,.0f} ns allowed", (user_ns + sys_ns) / (1e9 / (3 * qa)), "-", None))
    f4, f32 = median(aio_floor[4]), median(aio_floor[32])
    rows.append(("6''", "Floor under row 6: 32 tasks doing nothing but awaiting an io_uring NOP each on one queue executor "
                 "(strata-ring-floor; no node, device or load generator), submit batches of 4 (the default) / 32: NOPs per second",
                 f"{iops(f4)} / {iops(f32)}", iops(qa), f4 / qa, "-", None))
    runs_aio = (f"- null-aio (IOPS): Strata {', '.join(f'{v:,.0f}' for v in aio_strata)}; qemu-img bench {', '.join(f'{v:,.0f}' for v in aio_qemu)}\n"
                f"- null-aio CPU per request, user + kernel (ns): Strata {', '.join(f'{u:,.0f} + {k:,.0f}' for u, k in aio_split)}\n"
                f"- ring floor (NOPs per second), submit batch 4: {', '.join(f'{v:,.0f}' for v in aio_floor[4])}; "
                f"batch 32: {', '.join(f'{v:,.0f}' for v in aio_floor[32])}")

    nbd = {key: {"lat": [], "cpu": [], "sys": []} for key in ("strata", "nbdkit")}
    for run in range(args.runs):
        for key in (["strata", "nbdkit"] if run % 2 == 0 else ["nbdkit", "strata"]):
            for depth in (1, 32):
                lat, cpu, system = nbd_run(key, image, depth, args.seconds)
                if depth == 1:
                    nbd[key]["lat"].append(lat)
                else:
                    nbd[key]["cpu"].append(cpu)
                    nbd[key]["sys"].append(system)
    sl, nl = median(nbd["strata"]["lat"]), median(nbd["nbdkit"]["lat"])
    rows.append(("7a", "NBD server, 4 KiB random reads, QD1 (fio nbd engine): mean latency (peer: nbdkit)", micros(sl), micros(nl), sl / nl,
                 "<= 1.0x", sl / nl <= 1.0))
    sc, nc = median(nbd["strata"]["cpu"]), median(nbd["nbdkit"]["cpu"])
    rows.append(("7b", "NBD server, 4 KiB random reads, QD32: server CPU per I/O (peer: nbdkit)", f"{sc:,.0f} ns", f"{nc:,.0f} ns", sc / nc,
                 "<= 0.6x", sc / nc <= 0.6))
    # The kernel's share: if Strata's system time alone exceeds the target, no user-space work can meet it.
    ss, ns_ = median(nbd["strata"]["sys"]), median(nbd["nbdkit"]["sys"])
    rows.append(("7b'", "Same runs: the servers' kernel (system) CPU per I/O; ratio: Strata's kernel time over nbdkit's whole CPU per I/O",
                 f"{ss:,.0f} ns", f"{ns_:,.0f} ns", ss / nc, "-", None))
    runs_nbd = (f"- NBD QD1 (mean us): Strata {', '.join(f'{v / 1000:.1f}' for v in nbd['strata']['lat'])}; "
                f"nbdkit {', '.join(f'{v / 1000:.1f}' for v in nbd['nbdkit']['lat'])}\n"
                f"- NBD QD32 server CPU per I/O (ns): Strata {', '.join(f'{v:,.0f}' for v in nbd['strata']['cpu'])}; "
                f"nbdkit {', '.join(f'{v:,.0f}' for v in nbd['nbdkit']['cpu'])}\n"
                f"- NBD QD32 server kernel CPU per I/O (ns): Strata {', '.join(f'{v:,.0f}' for v in nbd['strata']['sys'])}; "
                f"nbdkit {', '.join(f'{v:,.0f}' for v in nbd['nbdkit']['sys'])}")

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    facts = machine_facts()
    lines = ["# vhost-user-blk and low queue depth: `strata serve` next to qemu-storage-daemon and nbdkit", "",
             f"Regenerated by `bash Bench/run-vhost.sh` on {now}; medians of {args.runs} runs (daemons alternating), "
             f"release build of Strata commit {commit_measured()}. The peer is qemu-storage-daemon unless the row names another.", "",
             "| row | measure | Strata | peer | ratio | target | result |", "|---|---|---|---|---|---|---|"]
    for key, title, strata, qsd, ratio, target, ok in rows:
        shown = "-" if qsd == "-" else f"{ratio:.2f}x"
        lines.append(f"| {key} | {title} | {strata} | {qsd} | {shown} | {target} | {'-' if ok is None else ('PASS' if ok else 'FAIL')} |")
    lines += ["", "## Runs", ""]
    for case in cases:
        field = "iops" if case[2] > 1 else "mean_ns"
        def show(values): return ", ".join(f"{v[field]:,.0f}" if field == "iops" else f"{v[field] / 1000:.1f}" for v in values)
        unit = "IOPS" if field == "iops" else "mean us"
        lines.append(f"- {case[0]}, {case[1]} queue(s), QD{case[2]} ({unit}): Strata {show(results[case]['strata'])}; QSD {show(results[case]['qsd'])}")
    lines.append(runs_aio)
    lines.append(runs_nbd)
    lines += ["", "## Commands", "",
              "- Front end, for both: `.build/release/strata bench --vhost-user SOCK --queues Q --depth D --rw randread --bs 4k "
              f"--seconds {args.seconds:g} --json --cpus FRONT` (a separate process; virtqueue i on its queue executor i).",
              "- Strata: `.build/release/strata serve --queues 2 --cpus BACK --blockdev NODE --export "
              "type=vhost-user-blk,id=v0,node-name=disk,addr.type=unix,addr.path=SOCK,writable=on,num-queues=2`.",
              "- QSD: `taskset -c BACK qemu-storage-daemon --blockdev NODE --export type=vhost-user-blk,...` (same export options).",
              "- FRONT and BACK: the CPUs of the front end's and the back end's queues, apart where the machine has twice as many "
              "CPUs as queues, else the same ones: " + "; ".join(f"{q} queue(s): front {placement(q)[0]}, back {placement(q)[1]}" for q in (1, 2)) + ".",
              "- NODE: `{\"driver\":\"null-co\",\"node-name\":\"disk\",\"size\":1073741824}`, or a file node on a 1 GiB raw image "
              "with `cache.direct=true`.",
              "- Row 5: `LD_PRELOAD=.build/release/libMallocInterposerSwift.so .build/release/strata-alloc-count --vhost-user --ops 50000 "
              "[--image IMG]`: an export and the front end in one process, (mallocs(2N) - mallocs(N)) / N.",
              f"- Row 6: `.build/release/strata bench --blockdev '{{\"driver\":\"null-aio\",...}}' --queues 1 --depth 32 --seconds {args.seconds:g}` "
              "and `qemu-img bench -c 2000000 -d 32 -t none --image-opts driver=null-aio,size=1073741824` (timed).",
              f"- Row 7: `.build/release/strata serve --image IMG --format raw --read-only --nbd unix:SOCK --cpus BACK` or "
              f"`taskset -c BACK nbdkit -f -r -U SOCK file IMG`, then `taskset -c FRONT fio --name=r --ioengine=nbd --uri=nbd+unix:///?socket=SOCK --rw=randread "
              f"--bs=4k --iodepth=1|32 --runtime={args.seconds:g} --time_based --output-format=json`; server CPU from /proc/PID/stat "
              "(utime + stime) over the fio run, divided by fio's I/O count; row 7b' shows the stime part alone.",
              "- Row 6': the strata bench process's user and system time (wait4) over its requests.",
              f"- Row 6'': `.build/release/strata-ring-floor --depth 32 --seconds {args.seconds:g} --submit-batch 4|32` (Bench/RingFloor): "
              "the runtime's and the kernel's share of row 6 alone; the ratio is the batch-4 figure over qemu-img bench's IOPS.",
              "", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    if (os.cpu_count() or 1) < 4:
        lines.append(f"- with {os.cpu_count()} CPUs, 2 queues put a front-end and a back-end queue thread on each CPU, where 1 queue "
                     "has a CPU for each side: row 2's ratio compares 2 queues on shared CPUs with 1 queue on CPUs of its own.")
    Path(args.out).write_text("\n".join(lines) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
