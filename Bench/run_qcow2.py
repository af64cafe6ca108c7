#!/usr/bin/env python3
"""Regenerate Bench/results/qcow2.md: Strata's qcow2 measured side by side with its peers.

Every row interleaves Strata and its peer run by run (alternating which goes first) and reports
the MEDIAN of --runs runs of each, and the ratio of the medians:

  1. 4 KiB random reads, QD32, one queue, O_DIRECT, of a fully allocated 1 GiB qcow2 (random
     data, 64 KiB clusters) vs the same data as a raw file, both through `strata bench`:
     CPU time per I/O, qcow2 / raw.                                   Target: <= 1.15x.
  2. Sequential 4 KiB allocating writes on 64 KiB clusters, a fresh 1 GiB image each run:
     `strata img bench -w` vs `qemu-img bench -w`, same flags, IOPS.  Target: >= 1.5x.
  3. Converting a 1 GiB qcow2 with half of its clusters allocated (random data) to qcow2:
     `strata img convert -O qcow2` vs `qemu-img convert -O qcow2`, throughput (virtual bytes /
     wall time).                                                     Target: >= 1.2x.

  4. Heap allocations per request, qcow2 random reads (strata-alloc-count under the malloc
     interposer, runs of N and 2N requests).                         Target: 0.

Usage: python3 Bench/run_qcow2.py [--runs N] [--seconds S] [--quick] [--out PATH]
Bench/run-qcow2.sh builds the release binary first. Exit status 0 when every run completed
(targets may still FAIL: read the file), 1 when a run failed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_core import (REPO, STRATA, RunError, commit_measured, machine_facts, median, order, parse_json_object,  # noqa: E402
                      run, log)

WORK = REPO / "Bench" / "work"


def random_raw(path: Path, mib: int) -> Path:
    if not path.exists() or path.stat().st_size != mib << 20:
        log(f"writing {mib} MiB of random data to {path}")
        run(["dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={mib}", "oflag=direct", "status=none"], timeout=600)
    return path


def half_allocated_qcow2(path: Path, raw: Path, mib: int) -> Path:
    """Every other MiB holds random data, the rest is a hole: qemu-img convert leaves those unallocated."""
    if path.exists():
        return path
    half = WORK / "qcow2-half.raw"
    with open(raw, "rb") as source, open(half, "wb") as target:
        target.truncate(mib << 20)
        for index in range(0, mib, 2):
            source.seek(index << 20)
            target.seek(index << 20)
            target.write(source.read(1 << 20))
    run(["qemu-img", "convert", "-O", "qcow2", str(half), str(path)], timeout=600)
    half.unlink()
    return path


def drop_page_cache(path: Path) -> None:
    """O_DIRECT reads of a file with cached pages make the kernel look up the page cache on every
    request: an image qemu-img wrote through the cache is flushed and dropped first."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def seconds_of(output: str, what: str) -> float:
    match = re.search(r"Run completed in ([0-9.]+) seconds", output)
    if not match:
        raise RunError(f"{what}: no 'Run completed' line in:\n{output[-800:]}")
    return float(match.group(1))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(REPO / "Bench" / "results" / "qcow2.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.seconds = 1, 1
    os.chdir(REPO)
    WORK.mkdir(parents=True, exist_ok=True)
    mib = 256 if args.quick else 1024
    cpu = 1 if 1 in os.sched_getaffinity(0) else sorted(os.sched_getaffinity(0))[-1]
    raw = random_raw(WORK / f"core-random-{mib}M.img", mib)
    qcow2 = WORK / f"qcow2-random-{mib}M.qcow2"
    if not qcow2.exists():
        run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], timeout=600)
    drop_page_cache(raw)
    drop_page_cache(qcow2)
    rows: list[tuple[str, str, str, str, str, str, str]] = []
    notes: list[str] = []
    commands: list[str] = []

    # Row 1: qcow2 vs raw reads through strata bench.
    seconds = f"{args.seconds:g}"
    common = ["--rw", "randread", "--bs", "4k", "--depth", "32", "--queues", "1", "--cpus", str(cpu), "--seconds", seconds, "--json"]
    raw_argv = [STRATA, "bench", "--image", str(raw), "--cache", "none"] + common
    qcow2_argv = [STRATA, "bench",
                  "--blockdev", f'{{"driver":"file","node-name":"proto","filename":"{qcow2}","cache":{{"direct":true}}}}',
                  "--blockdev", '{"driver":"qcow2","node-name":"fmt","file":"proto","backing":null}', "--root", "fmt"] + common
    raw_cpu, qcow_cpu, raw_iops, qcow_iops = [], [], [], []
    for index in range(args.runs):
        for side in order(index, "raw", "qcow2"):
            argv = raw_argv if side == "raw" else qcow2_argv
            proc = run(argv, timeout=args.seconds * 4 + 120)
            report = parse_json_object(proc.stdout, f"strata bench ({side})")
            if report.get("failed", 0):
                raise RunError(f"strata bench ({side}) had failed requests: {report}")
            (raw_cpu if side == "raw" else qcow_cpu).append(report["cpu_ns_per_op"])
            (raw_iops if side == "raw" else qcow_iops).append(report["iops"])
            log(f"  row 1 run {index + 1} {side}: {report['iops']:,.0f} IOPS, {report['cpu_ns_per_op']:,.0f} CPU ns/op")
    ratio = median(qcow_cpu) / median(raw_cpu)
    rows.append(("1", "4 KiB randread QD32 O_DIRECT, CPU per I/O: qcow2 / raw (both `strata bench`)",
                 f"{median(qcow_cpu):,.0f} ns/IO ({median(qcow_iops):,.0f} IOPS)", f"{median(raw_cpu):,.0f} ns/IO ({median(raw_iops):,.0f} IOPS)",
                 f"{ratio:.2f}x", "<= 1.15x", "PASS" if ratio <= 1.15 else "FAIL"))
    notes.append(f"- Row 1 runs, qcow2 CPU ns/op: {', '.join(f'{v:,.0f}' for v in qcow_cpu)}; raw: {', '.join(f'{v:,.0f}' for v in raw_cpu)}")
    notes.append(f"- Row 1 images: `{raw}` ({mib} MiB from /dev/urandom) and `{qcow2}` = `qemu-img convert -O qcow2` of it "
                 "(every cluster allocated); both dropped from the page cache (fsync + POSIX_FADV_DONTNEED) before the runs.")
    commands += [shlex.join(qcow2_argv), shlex.join(raw_argv)]

    # Row 2: allocating sequential writes, img bench.
    count = 50000 if args.quick else 200000
    image = WORK / "qcow2-bench.qcow2"
    flags = ["-w", "-c", str(count), "-d", "64", "-s", "4k", "-t", "none", "-f", "qcow2", str(image)]
    s_times, q_times = [], []
    for index in range(args.runs):
        for side in order(index, "qemu", "strata"):
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", str(image), "1G"], timeout=60)
            argv = (["qemu-img", "bench"] if side == "qemu" else [STRATA, "img", "bench"]) + flags
            proc = run(argv, timeout=600)
            value = seconds_of(proc.stdout + proc.stderr, side)
            check = run(["qemu-img", "check", str(image)], timeout=120)
            if "No errors were found" not in check.stdout:
                raise RunError(f"{side}: qemu-img check after the bench: {check.stdout}")
            (s_times if side == "strata" else q_times).append(value)
            log(f"  row 2 run {index + 1} {side}: {count / value:,.0f} IOPS")
    image.unlink(missing_ok=True)
    s_iops, q_iops = count / median(s_times), count / median(q_times)
    rows.append(("2", "Sequential 4 KiB allocating writes, 64 KiB clusters, QD64, O_DIRECT: IOPS",
                 f"{s_iops:,.0f} IOPS", f"{q_iops:,.0f} IOPS", f"{s_iops / q_iops:.2f}x", ">= 1.5x",
                 "PASS" if s_iops / q_iops >= 1.5 else "FAIL"))
    notes.append(f"- Row 2 runs (s): strata {', '.join(f'{v:.3f}' for v in s_times)}; qemu-img {', '.join(f'{v:.3f}' for v in q_times)}; "
                 "each on a fresh `qemu-img create -f qcow2 -o cluster_size=64k IMG 1G`, checked clean by `qemu-img check` afterwards.")
    commands += [shlex.join(["qemu-img", "bench"] + flags), shlex.join([STRATA, "img", "bench"] + flags)]

    # Row 3: convert a half-allocated qcow2.
    source = half_allocated_qcow2(WORK / f"qcow2-half-{mib}M.qcow2", raw, mib)
    target = WORK / "qcow2-convert-out.qcow2"
    s_secs, q_secs = [], []
    for index in range(args.runs):
        for side in order(index, "qemu", "strata"):
            target.unlink(missing_ok=True)
            argv = (["qemu-img", "convert"] if side == "qemu" else [STRATA, "img", "convert"]) + ["-O", "qcow2", str(source), str(target)]
            start = time.monotonic()
            run(argv, timeout=600)
            elapsed = time.monotonic() - start
            (s_secs if side == "strata" else q_secs).append(elapsed)
            log(f"  row 3 run {index + 1} {side}: {mib / elapsed:,.0f} MiB/s")
            if index == 0:
                compare = run(["qemu-img", "compare", str(source), str(target)], timeout=600)
                check = run(["qemu-img", "check", str(target)], timeout=120)
                if "Images are identical" not in compare.stdout or "No errors were found" not in check.stdout:
                    raise RunError(f"{side} convert output: {compare.stdout} {check.stdout}")
    target.unlink(missing_ok=True)
    s_rate, q_rate = mib / median(s_secs), mib / median(q_secs)
    rows.append(("3", f"convert {mib} MiB half-allocated qcow2 -> qcow2: throughput",
                 f"{s_rate:,.0f} MiB/s", f"{q_rate:,.0f} MiB/s", f"{s_rate / q_rate:.2f}x", ">= 1.2x",
                 "PASS" if s_rate / q_rate >= 1.2 else "FAIL"))
    notes.append(f"- Row 3 wall times (s): strata {', '.join(f'{v:.2f}' for v in s_secs)}; qemu-img {', '.join(f'{v:.2f}' for v in q_secs)}; "
                 f"source `{source}`: every other MiB of the random file, made by `qemu-img convert -O qcow2` of a sparse raw copy. "
                 "The first run of each is checked with `qemu-img compare` and `qemu-img check`.")
    commands += [f"qemu-img convert -O qcow2 {source} {target}", f"{STRATA} img convert -O qcow2 {source} {target}"]

    # Row 4: allocations per request on the qcow2 read path.
    alloc_argv = [".build/release/strata-alloc-count", "--image", str(qcow2), "--format", "qcow2", "--ops", "20000"]
    proc = run(alloc_argv, timeout=300, env={"LD_PRELOAD": ".build/release/libMallocInterposerSwift.so"})
    allocs = parse_json_object(proc.stdout, "strata-alloc-count")
    per_request = allocs["mallocs_per_request"]
    rows.append(("4", "Heap allocations per request, qcow2 4 KiB random reads", f"{per_request:g}", "-", "-", "0",
                 "PASS" if per_request == 0 and allocs["failed"] == 0 else "FAIL"))
    notes.append(f"- Row 4: {allocs['mallocs_n']} mallocs over {allocs['ops_n']} requests, {allocs['mallocs_2n']} over {allocs['ops_2n']} "
                 "(the difference divided by the extra requests).")
    commands.append("LD_PRELOAD=.build/release/libMallocInterposerSwift.so " + shlex.join(alloc_argv))

    facts = machine_facts()
    lines = ["# qcow2: Strata next to qemu-img", "",
             f"Regenerated by `bash Bench/run-qcow2.sh` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
             f"medians of {args.runs} interleaved runs, release build of Strata commit {commit_measured()}.", "",
             "| row | measure | Strata | peer | ratio | target | result |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines += ["", "## Runs", ""] + notes + ["", "## Commands", ""] + [f"    {c}" for c in commands]
    lines += ["", "## Machine", ""] + [f"- {key}: {value}" for key, value in facts.items()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except RunError as error:
        print(f"run_qcow2: {error}", file=sys.stderr)
        sys.exit(1)
