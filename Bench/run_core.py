#!/usr/bin/env python3
"""Regenerate Bench/results/core.md: Strata measured side by side with its peers in one run.

Rows (Strata and its peer are interleaved run by run, alternating which goes first, so drift
on the machine hits both sides alike; every figure is the MEDIAN of --runs runs):

  1. Null path, 4 KiB random reads, QD32, one queue: `strata bench` IOPS vs
     `qemu-img bench ... null-co://` IOPS.                            Target: ratio >= 5.
  2. O_DIRECT 4 KiB random reads, QD32, on a 1 GiB file of random data: `strata bench
     --image F --cache none` vs `fio --ioengine=io_uring --direct=1`, both pinned to one CPU.
     IOPS ratio >= 1.0 and CPU time per I/O ratio <= 0.65.
  3. Null path, 2 queues vs 1 queue: IOPS ratio >= 1.8.
  4. Graph edits under load: a 2-queue null-path run of 2*S+2 seconds with 10 inserts and 10
     removals of a throttle filter above raw0, evenly spaced. Failed requests = 0, edit errors
     = 0, and median over the 20 edits of (worst latency of a request in flight across the edit
     minus the run's p99.9) < 50 us. The median apply time is reported too.
  5. Heap allocations per request in steady state (strata-alloc-count under the malloc
     interposer), null path and file path. Target: 0.

The output file holds the exact command lines, every run's raw figure, the medians, the ratio of
the medians, the target and PASS/FAIL per row, and the machine (nproc, CPU model, kernel, date).

Usage (from anywhere; the script works in the repository root):

  python3 Bench/run_core.py [--runs N] [--seconds S] [--quick] [--out PATH] [--workdir DIR]
                            [--rows 1,2,3,4,5] [--no-build]

  --quick     1 run of 1 s each and a 256 MiB file: for trying the script, not for results.
  --rows      run only these rows (default: all).
  --no-build  accepted and ignored: building is Bench/run-core.sh's job.

It uses only the standard library and expects the release binaries to exist:
.build/release/strata, .build/release/strata-alloc-count and
.build/release/libMallocInterposerSwift.so (Bench/run-core.sh builds them), plus qemu-img
(qemu-utils), fio, taskset and dd.

Exit status: 0 when every run completed (targets may still FAIL: read the file), 1 when a run
failed (the file is still written, with the failed row marked ERROR), 2 for a usage error or a
missing tool (nothing is run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STRATA = ".build/release/strata"
ALLOC_COUNT = ".build/release/strata-alloc-count"
INTERPOSER = ".build/release/libMallocInterposerSwift.so"
BUILD_HINT = "build it with Bench/run-core.sh (or: swift build -c release --static-swift-stdlib --product {product})"


class RunError(Exception):
    """A measured command failed or printed something this script cannot read."""


# --------------------------------------------------------------------------------------------
# Small helpers


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def command_line(argv: list[str], env: dict[str, str] | None = None) -> str:
    prefix = "".join(f"{key}={shlex.quote(value)} " for key, value in (env or {}).items())
    return prefix + shlex.join(argv)


def run(argv: list[str], *, timeout: float, env: dict[str, str] | None = None,
        ok_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    """Runs argv in the repository root; raises RunError naming the command when it fails."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        proc = subprocess.run(argv, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    except OSError as error:  # missing, not executable, or being rewritten by a build (ETXTBSY)
        raise RunError(f"cannot run {argv[0]}: {error}\n  command: {command_line(argv, env)}") from None
    except subprocess.TimeoutExpired:
        raise RunError(f"timed out after {timeout:.0f} s\n  command: {command_line(argv, env)}") from None
    if proc.returncode not in ok_codes:
        raise RunError(f"exit status {proc.returncode}\n  command: {command_line(argv, env)}\n"
                       f"  stderr: {tail(proc.stderr)}\n  stdout: {tail(proc.stdout)}")
    return proc


def tail(text: str, limit: int = 1500) -> str:
    text = text.strip()
    if not text:
        return "(empty)"
    return ("..." + text[-limit:]) if len(text) > limit else text


def parse_json_object(text: str, what: str) -> dict:
    """The JSON object a tool printed: the whole stdout, or failing that its last '{' line."""
    text = text.strip()
    candidates = [text, text[text.find("{"):] if "{" in text else ""]
    candidates += [line for line in reversed(text.splitlines()) if line.lstrip().startswith("{")]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(value, dict):
            return value
    raise RunError(f"{what}: no JSON object in its output: {tail(text, 400)}")


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ns(value: float) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:,.2f} ms"
    if abs(value) >= 1e3:
        return f"{value / 1e3:,.1f} us"
    return f"{value:,.0f} ns"


def fmt_seconds_arg(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def order(index: int, first, second):
    """Alternates which side runs first (ABBA...), so a trend over time favours neither."""
    return (first, second) if index % 2 == 0 else (second, first)


# --------------------------------------------------------------------------------------------
# Machine and build facts


def machine_facts() -> dict[str, str]:
    facts: dict[str, str] = {}
    try:
        facts["nproc"] = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        facts["nproc"] = str(len(os.sched_getaffinity(0)))
    facts["online CPUs"] = str(os.cpu_count())
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                model = value.strip()
                break
    except OSError:
        pass
    facts["CPU model"] = model
    facts["kernel"] = f"{platform.system()} {platform.release()} ({platform.version()})"
    facts["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    facts["load average at start"] = loadavg()
    return facts


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def commit_measured() -> str:
    """The commit the tables measure: HEAD, flagged when what the binaries are built from
    (sources, the package manifest) differs from it. Results and scripts do not count."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "Sources", "Package.swift",
                                "Bench/AllocationCount"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        return (commit or "unknown") + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def build_facts() -> dict[str, str]:
    facts: dict[str, str] = {"Strata commit": commit_measured()}
    strata = REPO / STRATA
    if strata.exists():
        built = datetime.datetime.fromtimestamp(strata.stat().st_mtime, datetime.timezone.utc)
        facts["strata binary built"] = built.strftime("%Y-%m-%d %H:%M:%S UTC") + " (release)"
    for name, argv in (("qemu-img", ["qemu-img", "--version"]), ("fio", ["fio", "--version"])):
        try:
            out = subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()
            facts[name] = out[0] if out else "unknown"
        except OSError:
            facts[name] = "not found"
    return facts


# --------------------------------------------------------------------------------------------
# Rows


class Row:
    """One line of the summary table, plus its section of details."""

    def __init__(self, key: str, title: str):
        self.key = key
        self.title = title
        self.strata = "-"
        self.peer = "-"
        self.ratio = "-"
        self.target = "-"
        self.result = "ERROR"


class Section:
    def __init__(self, number: int, title: str):
        self.number = number
        self.title = title
        self.rows: list[Row] = []
        self.commands: list[str] = []
        self.lines: list[str] = []
        self.error: str | None = None


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.runs: int = args.runs
        self.seconds: float = args.seconds
        self.s_arg = fmt_seconds_arg(args.seconds)
        self.workdir = Path(args.workdir)
        self.image_mib = 256 if args.quick else 1024
        self.alloc_ops = 20_000 if args.quick else 200_000
        # The null path runs 10x longer: at 7M requests/s, 200,000 requests last 30 ms, and a one-time
        # growth (a queue reaching a new high-water mark) could land between N and 2N.
        self.alloc_ops_null = self.alloc_ops * 10
        self.ncpu = len(os.sched_getaffinity(0))
        affinity = sorted(os.sched_getaffinity(0))
        self.pin_cpu = 1 if 1 in affinity else affinity[-1]

    # strata bench, run and parsed; exit status 1 with a JSON report means "some requests failed"
    def strata_bench(self, argv: list[str], what: str) -> dict:
        proc = run(argv, timeout=self.seconds * 4 + 120, ok_codes=(0, 1))
        report = parse_json_object(proc.stdout, what) if proc.stdout.strip() else None
        if report is None or "iops" not in report:
            raise RunError(f"{what}: exit status {proc.returncode}, no report\n  command: {shlex.join(argv)}\n"
                           f"  stderr: {tail(proc.stderr)}\n  stdout: {tail(proc.stdout)}")
        if proc.returncode != 0 and not (report.get("failed", 0) or report.get("verify_failures", 0)):
            raise RunError(f"{what}: exit status {proc.returncode}\n  command: {shlex.join(argv)}\n  stderr: {tail(proc.stderr)}")
        return report

    def null_args(self, queues: int) -> list[str]:
        return [STRATA, "bench", "--json", "--queues", str(queues), "--depth", "32", "--bs", "4k",
                "--rw", "randread", "--seconds", self.s_arg]

    # ---- row 1 -----------------------------------------------------------------------------
    def row_null_vs_qemu(self, section: Section) -> None:
        row = Row("1", "Null path, 4 KiB randread QD32, 1 queue: IOPS, Strata / qemu-img bench")
        section.rows.append(row)
        regex = re.compile(r"Run completed in ([0-9.]+) seconds")

        def qemu(count: int) -> tuple[float, list[str]]:
            argv = ["qemu-img", "bench", "-c", str(count), "-d", "32", "-t", "none", "null-co://"]
            proc = run(argv, timeout=max(120.0, self.seconds * 10))
            match = regex.search(proc.stdout + proc.stderr)
            if not match:
                raise RunError(f"qemu-img bench: no 'Run completed in X seconds' in its output\n  command: {shlex.join(argv)}\n"
                               f"  output: {tail(proc.stdout + proc.stderr, 400)}")
            return max(float(match.group(1)), 1e-6), argv

        # Calibration: find the request count that runs about --seconds seconds.
        count = 200_000
        elapsed, _ = qemu(count)
        while elapsed < 0.3 and count < 10**10:
            count = int(count * max(2.0, 0.5 / elapsed))
            elapsed, _ = qemu(count)
        n = max(1000, int(round(count * self.seconds / elapsed)))
        calibration = f"`-c {count}` ran {elapsed:.3f} s"
        log(f"  qemu-img calibration: {count} requests in {elapsed:.3f} s -> -c {n}")

        strata_iops: list[float] = []
        qemu_iops: list[float] = []
        failed = 0
        strata_argv = self.null_args(1)
        qemu_argv: list[str] = []
        for i in range(self.runs):
            for side in order(i, "qemu", "strata"):
                if side == "qemu":
                    elapsed, qemu_argv = qemu(n)
                    qemu_iops.append(n / elapsed)
                    log(f"  run {i + 1}/{self.runs} qemu-img: {n} requests in {elapsed:.3f} s = {fmt_int(n / elapsed)} IOPS")
                else:
                    report = self.strata_bench(strata_argv, "strata bench (null, 1 queue)")
                    strata_iops.append(report["iops"])
                    failed += report.get("failed", 0)
                    log(f"  run {i + 1}/{self.runs} strata: {fmt_int(report['iops'])} IOPS, failed {report.get('failed')}")
        s, q = median(strata_iops), median(qemu_iops)
        ratio = s / q
        row.strata, row.peer = f"{fmt_int(s)} IOPS", f"{fmt_int(q)} IOPS"
        row.ratio, row.target = f"{ratio:.2f}x", ">= 5x"
        row.result = verdict(ratio >= 5.0 and failed == 0)
        section.commands += [shlex.join(strata_argv), shlex.join(qemu_argv)]
        section.lines += [
            f"- qemu-img request count: calibration run {calibration}, so `-c {n}` runs about {self.s_arg} s; "
            "qemu-img IOPS = count / \"Run completed in X seconds\".",
            f"- Strata IOPS per run: {', '.join(fmt_int(v) for v in strata_iops)}",
            f"- qemu-img IOPS per run: {', '.join(fmt_int(v) for v in qemu_iops)}",
            f"- Strata failed requests (all runs): {failed}",
            "- qemu-img bench reads sequentially (its default step); on null-co the offset pattern does not matter. "
            "Strata pins its queue to CPU 0 (its default: queue i on CPU i mod online CPUs); qemu-img is not pinned.",
        ]

    # ---- row 2 -----------------------------------------------------------------------------
    def random_image(self) -> Path:
        """A file of random bytes (a fallocate'd file reads zeros without I/O), made once."""
        size = self.image_mib << 20
        path = self.workdir / f"core-random-{self.image_mib}M.img"
        if path.exists() and path.stat().st_size == size and path.stat().st_blocks * 512 >= size:
            log(f"  reusing {path} ({self.image_mib} MiB of random data)")
            return path
        self.workdir.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        argv = ["dd", "if=/dev/urandom", f"of={partial}", "bs=1M", f"count={self.image_mib}", "oflag=direct", "status=none"]
        log(f"  writing {path} with random data: {shlex.join(argv)}")
        try:
            run(argv, timeout=900)
        except RunError:
            partial.unlink(missing_ok=True)
            raise
        if partial.stat().st_size != size:
            partial.unlink(missing_ok=True)
            raise RunError(f"dd wrote {partial} with the wrong size (expected {size} bytes)")
        os.replace(partial, path)
        return path

    def fio_args(self, image: Path) -> list[str]:
        runtime = self.s_arg if float(self.seconds).is_integer() else f"{int(round(self.seconds * 1000))}ms"
        return ["taskset", "-c", str(self.pin_cpu), "fio", "--name=r", f"--filename={image}", "--ioengine=io_uring",
                "--direct=1", "--rw=randread", "--bs=4k", "--iodepth=32", f"--runtime={runtime}", "--time_based",
                "--output-format=json"]

    def row_file_vs_fio(self, section: Section) -> None:
        iops_row = Row("2a", "O_DIRECT 4 KiB randread QD32 on a random-data file: IOPS, Strata / fio")
        cpu_row = Row("2b", "Same runs: CPU time per I/O, Strata / fio")
        section.rows += [iops_row, cpu_row]
        image = self.random_image()
        strata_argv = [STRATA, "bench", "--json", "--image", str(image), "--cache", "none", "--rw", "randread",
                       "--depth", "32", "--queues", "1", "--cpus", str(self.pin_cpu), "--seconds", self.s_arg]
        fio_argv = self.fio_args(image)
        s_iops: list[float] = []
        s_cpu: list[float] = []
        f_iops: list[float] = []
        f_cpu: list[float] = []
        failed = 0
        for i in range(self.runs):
            for side in order(i, "fio", "strata"):
                if side == "fio":
                    proc = run(fio_argv, timeout=self.seconds * 4 + 120)
                    data = parse_json_object(proc.stdout, "fio")
                    try:
                        job = data["jobs"][0]
                        read = job["read"]
                        ios = read.get("total_ios") or (read["io_kbytes"] // 4)
                        runtime_ms = job.get("job_runtime") or read["runtime"]
                        cpu_ns = (job["usr_cpu"] + job["sys_cpu"]) / 100.0 * (runtime_ms / 1000.0) * 1e9
                        if job.get("error"):
                            raise RunError(f"fio reported error {job['error']}\n  command: {shlex.join(fio_argv)}")
                        if ios <= 0:
                            raise RunError(f"fio did no I/O\n  command: {shlex.join(fio_argv)}")
                    except (KeyError, IndexError, TypeError) as error:
                        raise RunError(f"fio: unexpected JSON ({error!r})\n  command: {shlex.join(fio_argv)}") from None
                    f_iops.append(read["iops"])
                    f_cpu.append(cpu_ns / ios)
                    log(f"  run {i + 1}/{self.runs} fio: {fmt_int(read['iops'])} IOPS, {cpu_ns / ios:,.0f} CPU ns/IO "
                        f"(usr {job['usr_cpu']:.1f}% sys {job['sys_cpu']:.1f}%)")
                else:
                    report = self.strata_bench(strata_argv, "strata bench (file, O_DIRECT)")
                    s_iops.append(report["iops"])
                    s_cpu.append(report["cpu_ns_per_op"])
                    failed += report.get("failed", 0)
                    log(f"  run {i + 1}/{self.runs} strata: {fmt_int(report['iops'])} IOPS, "
                        f"{report['cpu_ns_per_op']:,.0f} CPU ns/op, failed {report.get('failed')}")
        si, fi, sc, fc = median(s_iops), median(f_iops), median(s_cpu), median(f_cpu)
        iops_row.strata, iops_row.peer = f"{fmt_int(si)} IOPS", f"{fmt_int(fi)} IOPS"
        iops_row.ratio, iops_row.target = f"{si / fi:.2f}x", ">= 1.0x"
        iops_row.result = verdict(si / fi >= 1.0 and failed == 0)
        cpu_row.strata, cpu_row.peer = f"{sc:,.0f} ns/IO", f"{fc:,.0f} ns/IO"
        cpu_row.ratio, cpu_row.target = f"{sc / fc:.2f}x", "<= 0.65x"
        cpu_row.result = verdict(sc / fc <= 0.65 and failed == 0)
        section.commands += [shlex.join(strata_argv), shlex.join(fio_argv)]
        section.lines += [
            f"- File: `{image}`, {self.image_mib} MiB written once from /dev/urandom with "
            f"`dd if=/dev/urandom of={image} bs=1M count={self.image_mib} oflag=direct` (random data, every block "
            "allocated; a fallocate'd file would read zeros without I/O). Reused while its size is right.",
            f"- Both pinned to CPU {self.pin_cpu}: fio with `taskset -c {self.pin_cpu}` (the whole fio process), "
            f"Strata with `--cpus {self.pin_cpu}` (its queue executor thread, which also runs the guest load generator).",
            "- CPU per I/O: fio = (usr_cpu + sys_cpu) / 100 * job_runtime_s * 1e9 / read.total_ios from its JSON; "
            "Strata = cpu_ns_per_op (process user + system CPU time over the run / requests). "
            "Both include generating the load (fio's job, Strata's in-process guest driver).",
            f"- Strata IOPS per run: {', '.join(fmt_int(v) for v in s_iops)}; CPU ns/op: {', '.join(f'{v:,.0f}' for v in s_cpu)}",
            f"- fio IOPS per run: {', '.join(fmt_int(v) for v in f_iops)}; CPU ns/IO: {', '.join(f'{v:,.0f}' for v in f_cpu)}",
            f"- Strata failed requests (all runs): {failed}",
        ]

    # ---- row 3 -----------------------------------------------------------------------------
    def row_queue_scaling(self, section: Section) -> None:
        row = Row("3", "Null path, 2 queues / 1 queue: IOPS")
        section.rows.append(row)
        one, two = self.null_args(1), self.null_args(2)
        q1: list[float] = []
        q2: list[float] = []
        failed = 0
        for i in range(self.runs):
            for queues in order(i, 1, 2):
                report = self.strata_bench(one if queues == 1 else two, f"strata bench (null, {queues} queues)")
                (q1 if queues == 1 else q2).append(report["iops"])
                failed += report.get("failed", 0)
                per_queue = ", ".join(fmt_int(q.get("iops", 0)) for q in report.get("queues", []))
                log(f"  run {i + 1}/{self.runs} strata {queues} queue(s): {fmt_int(report['iops'])} IOPS (per queue: {per_queue})")
        m1, m2 = median(q1), median(q2)
        row.strata, row.peer = f"{fmt_int(m2)} IOPS (2 queues)", f"{fmt_int(m1)} IOPS (1 queue)"
        row.ratio, row.target = f"{m2 / m1:.2f}x", ">= 1.8x"
        row.result = verdict(m2 / m1 >= 1.8 and failed == 0)
        section.commands += [shlex.join(two), shlex.join(one)]
        cores = (f"This machine has {self.ncpu} CPU(s) available. "
                 + (f"With {self.ncpu} cores, the two queue threads (pinned to CPUs 0 and 1) take every core, and share them "
                    "with everything else running (the OS, the benchmark script, any other user: see the load average above)."
                    if self.ncpu <= 2 else "The two queue threads are pinned to CPUs 0 and 1."))
        section.lines += [
            f"- {cores}",
            f"- 1 queue IOPS per run: {', '.join(fmt_int(v) for v in q1)}",
            f"- 2 queues IOPS per run: {', '.join(fmt_int(v) for v in q2)}",
            f"- Strata failed requests (all runs): {failed}",
        ]

    # ---- row 4 -----------------------------------------------------------------------------
    def edit_args(self, length: float) -> tuple[list[str], list[float]]:
        args: list[str] = []
        times: list[float] = []
        for k in range(20):
            at = round((k + 1) * length / 21, 3)
            times.append(at)
            name = f"t{k // 2 + 1}"
            if k % 2 == 0:
                edit = {"type": "insert-filter", "data": {"above": "raw0", "filter": {"driver": "throttle", "node-name": name}}}
            else:
                edit = {"type": "remove-filter", "data": {"node-name": name}}
            args += ["--edit-at", f"{at:g}:{json.dumps(edit, separators=(',', ':'))}"]
        return args, times

    def row_edits(self, section: Section) -> None:
        failed_row = Row("4a", "Graph edits under load (2 queues, null path): failed requests")
        errors_row = Row("4b", "Same runs: edits that returned an error (of 20 per run)")
        latency_row = Row("4c", "Same runs: median over the 20 edits of (worst in-flight latency across the edit - run's p99.9)")
        section.rows += [failed_row, errors_row, latency_row]
        length = 2 * self.seconds + 2
        edits, times = self.edit_args(length)
        argv = [STRATA, "bench", "--json", "--queues", "2", "--depth", "32", "--bs", "4k", "--rw", "randread",
                "--seconds", fmt_seconds_arg(length)] + edits
        failed_total = 0
        error_total = 0
        excess: list[float] = []
        applies: list[float] = []
        per_run: list[str] = []
        for i in range(self.runs):
            report = self.strata_bench(argv, "strata bench (edits under load)")
            reports = report.get("edits", [])
            failed = report.get("failed", 0)
            errors = [e for e in reports if e.get("error")]
            p999 = report["latency_ns"]["p999"]
            if len(reports) != 20:
                raise RunError(f"strata bench reported {len(reports)} edits, expected 20\n  command: {shlex.join(argv)}")
            worst = [e["max_inflight_latency_ns"] for e in reports]
            run_excess = median([w - p999 for w in worst])
            run_apply = median([e["apply_ns"] for e in reports])
            no_inflight = sum(1 for e in reports if not e.get("requests_inflight_across"))
            failed_total += failed
            error_total += len(errors)
            excess.append(run_excess)
            applies.append(run_apply)
            per_run.append(f"run {i + 1}: failed {failed}, edit errors {len(errors)}, p99.9 {fmt_ns(p999)}, "
                           f"median worst in-flight {fmt_ns(median(worst))}, excess {fmt_ns(run_excess)}, "
                           f"median apply {fmt_ns(run_apply)}, max apply {fmt_ns(max(e['apply_ns'] for e in reports))}, "
                           f"edits with no request in flight {no_inflight}, IOPS {fmt_int(report['iops'])}"
                           + (f"; first error: {errors[0]['error']}" if errors else ""))
            log(f"  {per_run[-1]}")
        m_excess, m_apply = median(excess), median(applies)
        failed_row.strata, failed_row.target = str(failed_total), "0"
        failed_row.result = verdict(failed_total == 0)
        errors_row.strata, errors_row.target = str(error_total), "0"
        errors_row.result = verdict(error_total == 0)
        latency_row.strata, latency_row.target = fmt_ns(m_excess), "< 50 us"
        latency_row.result = verdict(m_excess < 50_000)
        section.commands.append(shlex.join(argv))
        section.lines += [
            f"- One {fmt_seconds_arg(length)} s run (2*S+2) per repetition; 20 edits evenly spaced at "
            f"{', '.join(f'{t:g}' for t in times)} s: insert-filter of throttle tK above raw0, then remove-filter of tK, K = 1..10.",
            "- Per edit, `max_inflight_latency_ns` is the largest latency of a request in flight on a queue when that queue "
            "switched to the new graph; the figure is the median over the 20 edits of that minus the run's `latency_ns.p999`, "
            "then the median over runs.",
            f"- Median apply time (transaction start until every queue switched): {fmt_ns(m_apply)} "
            f"(per run: {', '.join(fmt_ns(v) for v in applies)}).",
        ] + [f"- {line}" for line in per_run]

    # ---- row 5 -----------------------------------------------------------------------------
    def row_allocations(self, section: Section) -> None:
        null_row = Row("5a", "Heap allocations per request, steady state, null path")
        file_row = Row("5b", "Heap allocations per request, steady state, file path (cache none)")
        section.rows += [null_row, file_row]
        image = self.random_image()
        env = {"LD_PRELOAD": INTERPOSER}
        null_argv = [ALLOC_COUNT, "--ops", str(self.alloc_ops_null)]
        file_argv = [ALLOC_COUNT, "--image", str(image), "--ops", str(self.alloc_ops)]
        figures: dict[str, list[dict]] = {"null": [], "file": []}
        for i in range(self.runs):
            for kind in order(i, "null", "file"):
                argv = null_argv if kind == "null" else file_argv
                proc = run(argv, env=env, timeout=600)
                data = parse_json_object(proc.stdout, "strata-alloc-count")
                if "mallocs_per_request" not in data:
                    raise RunError(f"strata-alloc-count: no mallocs_per_request in {tail(proc.stdout, 300)}")
                figures[kind].append(data)
                log(f"  run {i + 1}/{self.runs} {kind}: {data['mallocs_per_request']} mallocs/request "
                    f"(N={data.get('ops_n')}: {data.get('mallocs_n')}, 2N={data.get('ops_2n')}: {data.get('mallocs_2n')}, "
                    f"failed {data.get('failed')})")
        for row, kind in ((null_row, "null"), (file_row, "file")):
            values = [d["mallocs_per_request"] for d in figures[kind]]
            failed = sum(d.get("failed", 0) for d in figures[kind])
            value = median(values)
            row.strata, row.target = f"{value:g}", "0"
            row.result = verdict(value == 0 and failed == 0)
            section.lines.append(
                f"- {kind} path per run: " + "; ".join(
                    f"{d['mallocs_per_request']:g} (N={d.get('ops_n')} requests: {d.get('mallocs_n')} mallocs, "
                    f"2N={d.get('ops_2n')}: {d.get('mallocs_2n')}, failed {d.get('failed')})" for d in figures[kind]))
        section.commands += [command_line(null_argv, env), command_line(file_argv, env)]
        section.lines.insert(0, "- Method: with the malloc interposer preloaded, strata-alloc-count runs a warm-up of N/10 "
                                "requests, then N and 2N requests (1 queue, QD32, 4 KiB randread, default graph), counting "
                                "mallocs in each; figure = (mallocs(2N) - mallocs(N)) / (ops(2N) - ops(N)), which cancels "
                                f"what a run allocates once. N = {self.alloc_ops_null} on the null path, {self.alloc_ops} on the file path. PASS only for exactly 0.")


# --------------------------------------------------------------------------------------------
# Output


def render(bench: Bench, sections: list[Section], machine: dict[str, str], build: dict[str, str],
           invocation: str, started: float) -> str:
    args = bench.args
    out: list[str] = []
    out.append("# Strata core benchmarks: Strata beside its peers\n")
    out.append(f"Generated by `{invocation}` (Bench/run-core.sh builds first, then runs this) on {machine['date']}. "
               f"Every figure is the median of {bench.runs} run(s) of {bench.s_arg} s "
               "(row 4: runs of 2*S+2 s); Strata and its peer alternate run by run (ABBA order). "
               "Ratio = ratio of the medians. Commands run in the repository root.\n")
    if args.quick:
        out.append("**QUICK MODE (--quick): 1 run of 1 s and a 256 MiB file. For trying the script, not results.**\n")
    errors = [s for s in sections if s.error]
    if errors:
        out.append(f"**ERRORS: {len(errors)} row group(s) failed to run: "
                   + ", ".join(str(s.number) for s in errors) + ". See below.**\n")
    out.append("## Machine\n")
    for key, value in list(machine.items()) + [("load average at end", loadavg())] + list(build.items()):
        out.append(f"- {key}: {value}")
    out.append(f"- elapsed: {time.monotonic() - started:.0f} s")
    out.append("")
    out.append("## Summary\n")
    out.append("| Row | Measure | Strata | Peer / baseline | Ratio | Target | Result |")
    out.append("|---|---|---|---|---|---|---|")
    for section in sections:
        for row in section.rows:
            out.append(f"| {row.key} | {row.title} | {row.strata} | {row.peer} | {row.ratio} | {row.target} | {row.result} |")
    out.append("")
    for section in sections:
        out.append(f"## {section.number}. {section.title}\n")
        if section.commands:
            out.append("Commands:\n")
            out.append("```sh")
            out += section.commands
            out.append("```\n")
        if section.error:
            out.append("**ERROR:**\n")
            out.append("```")
            out.append(section.error)
            out.append("```\n")
        out += section.lines
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# Main


ROWS = {
    1: ("Null path: Strata vs qemu-img bench", "row_null_vs_qemu"),
    2: ("O_DIRECT file reads: Strata vs fio (io_uring)", "row_file_vs_fio"),
    3: ("Queue scaling on the null path", "row_queue_scaling"),
    4: ("Graph edits under load", "row_edits"),
    5: ("Heap allocations per request", "row_allocations"),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, help="runs per figure; the median is reported (default 3, --quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds per measured run (default 5, --quick 1)")
    parser.add_argument("--quick", action="store_true", help="1 run, 1 s, a 256 MiB file: for trying the script")
    parser.add_argument("--out", default="Bench/results/core.md", help="output file (default Bench/results/core.md)")
    parser.add_argument("--workdir", default="Bench/work", help="scratch directory for the test file (default Bench/work)")
    parser.add_argument("--rows", default="1,2,3,4,5", help="rows to run, comma separated (default all: 1,2,3,4,5)")
    parser.add_argument("--no-build", action="store_true", help="ignored here (Bench/run-core.sh skips its builds)")
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 5.0
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not (0 < args.seconds <= 3600):
        parser.error("--seconds must be in (0, 3600]")
    try:
        args.row_list = sorted({int(r) for r in args.rows.split(",") if r.strip()})
    except ValueError:
        parser.error(f"--rows expects numbers 1-5 separated by commas, got {args.rows!r}")
    if not args.row_list or any(r not in ROWS for r in args.row_list):
        parser.error(f"--rows expects numbers 1-5 separated by commas, got {args.rows!r}")
    return args


def check_tools(rows: list[int]) -> list[str]:
    """What the chosen rows need and is missing, each with how to get it."""
    missing: list[str] = []
    if any(r in rows for r in (1, 2, 3, 4)) and not os.access(REPO / STRATA, os.X_OK):
        missing.append(f"{STRATA}: {BUILD_HINT.format(product='strata')}")
    if 5 in rows:
        if not os.access(REPO / ALLOC_COUNT, os.X_OK):
            missing.append(f"{ALLOC_COUNT}: {BUILD_HINT.format(product='strata-alloc-count')}")
        if not (REPO / INTERPOSER).exists():
            missing.append(f"{INTERPOSER}: {BUILD_HINT.format(product='strata-alloc-count')}")
    needs = {"qemu-img": (1, "apt-get install qemu-utils (scripts/install-deps)"),
             "fio": (2, "apt-get install fio (scripts/install-deps)"),
             "taskset": (2, "apt-get install util-linux")}
    for tool, (row, hint) in needs.items():
        if row in rows and shutil.which(tool) is None:
            missing.append(f"{tool}: {hint}")
    if any(r in rows for r in (2, 5)) and shutil.which("dd") is None:
        missing.append("dd: apt-get install coreutils")
    return missing


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    invocation = "python3 Bench/run_core.py" + ("" if not argv else " " + shlex.join(argv))
    os.chdir(REPO)
    missing = check_tools(args.row_list)
    if missing:
        log("error: missing what the benchmark needs, nothing was run:")
        for item in missing:
            log(f"  - {item}")
        return 2

    started = time.monotonic()
    machine = machine_facts()
    build = build_facts()
    bench = Bench(args)
    sections: list[Section] = []
    for number in args.row_list:
        title, method = ROWS[number]
        section = Section(number, title)
        sections.append(section)
        log(f"[row {number}] {title}")
        try:
            getattr(bench, method)(section)
        except RunError as error:
            section.error = str(error)
            log(f"error: row {number} ({title}) failed: {error}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(bench, sections, machine, build, invocation, started))
    log(f"wrote {out}")
    for section in sections:
        for row in section.rows:
            log(f"  {row.key:>3} {row.result:5} {row.ratio if row.ratio != '-' else row.strata:>14}  {row.title}")
    failed = [s.number for s in sections if s.error]
    if failed:
        log(f"error: row(s) {', '.join(map(str, failed))} failed to run; see {out}")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
