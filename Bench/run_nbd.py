#!/usr/bin/env python3
"""Regenerate Bench/results/nbd.md: `strata serve` as an NBD server next to nbdkit and qemu-nbd.

The three servers run in turn, run by run (rotating which goes first), on the same image, and
every figure is the MEDIAN of --runs runs:

  1. fio --ioengine=nbd, 4 KiB random reads, QD32, one job, --seconds s each, on a 1 GiB raw
     image of random data (page cache warm: it is read once before the runs):
     IOPS  Strata / nbdkit >= 1.5x,  Strata / qemu-nbd >= 2x.
  2. nbdcopy of the same 1 GiB image from each server to null:, wall time:
     nbdkit time / Strata time >= 1.2x.

Servers: `.build/release/strata serve --image IMG --format raw --read-only --nbd 127.0.0.1:PORT`
(waited for by its "NBD server listening on" line), `nbdkit -f -r -i 127.0.0.1 -p PORT file IMG`,
`qemu-nbd -t -r -f raw -b 127.0.0.1 -p PORT IMG`. When `strata serve` fails to start or to serve,
its rows say FAIL (with the error) and the peers' numbers are still measured and written.

Usage: python3 Bench/run_nbd.py [--runs N] [--seconds S] [--quick] [--out PATH]
Exit status 0 when every peer run completed (targets may still FAIL), 1 when a peer run failed.
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_core import REPO, STRATA, RunError, commit_measured, machine_facts, median, log, tail  # noqa: E402

WORK = REPO / "Bench" / "work"
TOOL_ENV = dict(os.environ, PATH="/usr/bin:/usr/local/bin:" + os.environ.get("PATH", "/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process on 127.0.0.1, started and stopped around each measured run."""

    def __init__(self, key: str, image: Path):
        self.key, self.image, self.proc, self.port = key, image, None, 0

    def argv(self, port: int) -> list[str]:
        image = str(self.image)
        if self.key == "strata":
            return [STRATA, "serve", "--image", image, "--format", "raw", "--read-only", "--nbd", f"127.0.0.1:{port}"]
        if self.key == "nbdkit":
            return ["nbdkit", "-f", "-r", "-i", "127.0.0.1", "-p", str(port), "file", image]
        return ["qemu-nbd", "-t", "-r", "-f", "raw", "-b", "127.0.0.1", "-p", str(port), image]

    def __enter__(self) -> "Server":
        port = 0 if self.key == "strata" else free_port()
        argv = self.argv(port)
        self.command = shlex.join(self.argv(10809))
        self.proc = subprocess.Popen(argv, cwd=REPO, env=TOOL_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 20
        if self.key == "strata":
            line = ""
            while time.time() < deadline:
                line = self.proc.stdout.readline()
                if not line:
                    break
                if "NBD server listening on " in line:
                    self.port = int(line.rsplit(":", 1)[1])
                    return self
            self.stop()
            raise RunError(f"strata serve did not print its listening line: {tail(line)} {tail(self.proc.stderr.read() if self.proc.stderr else '')}")
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RunError(f"{argv[0]} exited {self.proc.returncode}: {tail(self.proc.stderr.read())}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                self.port = port
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RunError(f"{argv[0]} did not listen on port {port}")

    @property
    def uri(self) -> str:
        return f"nbd://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc) -> None:
        self.stop()


def tool(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=REPO, env=TOOL_ENV, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RunError(f"exit {proc.returncode}: {shlex.join(argv)}\n  {tail(proc.stderr)}\n  {tail(proc.stdout)}")
    return proc


def fio_argv(uri: str, seconds: float) -> list[str]:
    return ["fio", "--name=nbd-randread", "--ioengine=nbd", f"--uri={uri}", "--rw=randread", "--bs=4k", "--iodepth=32",
            "--numjobs=1", "--time_based", f"--runtime={seconds:g}", "--size=1g", "--output-format=json"]


def fio_iops(uri: str, seconds: float) -> tuple[float, float]:
    """IOPS and fio's own CPU use (usr + sys, % of one CPU)."""
    out = tool(fio_argv(uri, seconds), timeout=seconds + 60).stdout
    data = json.loads(out[out.index("{"):])  # fio prints a line before its JSON
    job = data["jobs"][0]
    if job.get("error"):
        raise RunError(f"fio error {job['error']}")
    return float(job["read"]["iops"]), float(job["usr_cpu"]) + float(job["sys_cpu"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nbdcopy_seconds(uri: str) -> float:
    start = time.perf_counter()
    tool(["nbdcopy", uri, "null:"], timeout=300)
    return time.perf_counter() - start


def random_image(mib: int) -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"nbd-random-{mib}M.img"
    if not path.exists() or path.stat().st_size != mib << 20:
        log(f"writing {mib} MiB of random data to {path}")
        subprocess.run(["dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={mib}", "status=none"], check=True)
    with open(path, "rb") as f:  # warm the page cache
        while f.read(8 << 20):
            pass
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--quick", action="store_true", help="1 run of 2 s and a 256 MiB image: for trying the script")
    parser.add_argument("--out", default=str(REPO / "Bench" / "results" / "nbd.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.seconds = 1, 2
    mib = 256 if args.quick else 1024
    machine = machine_facts()
    image = random_image(mib)
    keys = ["strata", "nbdkit", "qemu-nbd"]
    iops: dict[str, list[float]] = {k: [] for k in keys}
    copy: dict[str, list[float]] = {k: [] for k in keys}
    client_cpu: dict[str, list[float]] = {k: [] for k in keys}
    server_us: dict[str, list[float]] = {k: [] for k in keys}
    copy_cpu: dict[str, list[float]] = {k: [] for k in keys}
    errors: dict[str, str] = {}
    commands: dict[str, str] = {}
    peer_failed = False
    for run_index in range(args.runs):
        rotation = keys[run_index % 3:] + keys[:run_index % 3]
        for key in rotation:
            if key in errors:
                continue
            log(f"run {run_index + 1}/{args.runs}: {key}")
            try:
                with Server(key, image) as server:
                    commands[key] = server.command
                    before = cpu_seconds(server.proc.pid)
                    value, fio_cpu = fio_iops(server.uri, args.seconds)
                    iops[key].append(value)
                    client_cpu[key].append(fio_cpu)
                    server_us[key].append((cpu_seconds(server.proc.pid) - before) / (value * args.seconds) * 1e6)
                    before = cpu_seconds(server.proc.pid)
                    copy[key].append(nbdcopy_seconds(server.uri))
                    copy_cpu[key].append(cpu_seconds(server.proc.pid) - before)
            except (RunError, OSError, subprocess.TimeoutExpired, ValueError, KeyError) as error:
                errors[key] = str(error).strip().replace("\n", " ")[:600]
                log(f"{key} failed: {errors[key]}")
                peer_failed |= key != "strata"

    def med(values: list[float]) -> float | None:
        return median(values) if values else None

    m_iops = {k: med(v) for k, v in iops.items()}
    m_copy = {k: med(v) for k, v in copy.items()}

    def cell(value: float | None, unit: str) -> str:
        if value is None:
            return "ERROR"
        return f"{value:,.0f} IOPS" if unit == "iops" else f"{value:.2f} s ({(mib / value):,.0f} MiB/s)"

    rows = []
    for number, (measure, peer, unit, target) in enumerate([
            ("fio nbd 4 KiB randread QD32, IOPS: Strata / nbdkit", "nbdkit", "iops", 1.5),
            ("fio nbd 4 KiB randread QD32, IOPS: Strata / qemu-nbd", "qemu-nbd", "iops", 2.0),
            (f"nbdcopy {mib} MiB -> null:, time: nbdkit / Strata", "nbdkit", "time", 1.2)], start=1):
        table = m_iops if unit == "iops" else m_copy
        s, p = table["strata"], table[peer]
        if s is None or p is None:
            ratio, result = "-", "FAIL"
        else:
            value = s / p if unit == "iops" else p / s
            ratio, result = f"{value:.2f}x", "PASS" if value >= target else "FAIL"
        rows.append(f"| {number} | {measure} | {cell(s, unit)} | {cell(p, unit)} | {ratio} | >= {target}x | {result} |")

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# NBD: `strata serve` next to nbdkit and qemu-nbd", "",
        f"Regenerated by `bash Bench/run-nbd.sh` on {now}; medians of {args.runs} interleaved runs"
        f"{' (--quick: not a result)' if args.quick else ''}, release build of Strata commit {commit_measured()}; servers on 127.0.0.1 TCP, "
        "one at a time.", "",
        "| row | measure | Strata | peer | ratio | target | result |", "|---|---|---|---|---|---|---|", *rows, "",
        "## Runs", "",
        *(f"- {k}: fio IOPS {', '.join(f'{v:,.0f}' for v in iops[k]) or '-'}; nbdcopy s {', '.join(f'{v:.2f}' for v in copy[k]) or '-'}" for k in keys),
        *(f"- {k}: fio's own CPU {', '.join(f'{v:.0f}%' for v in client_cpu[k]) or '-'}; server CPU per fio I/O "
          f"{', '.join(f'{v:.1f} µs' for v in server_us[k]) or '-'}; server CPU per nbdcopy "
          f"{', '.join(f'{v:.2f} s' for v in copy_cpu[k]) or '-'}" for k in keys),
        *(f"- {k} ERROR: {e}" for k, e in errors.items()),
        f"- Image: `{image}` ({mib} MiB from /dev/urandom), read through once before the runs (page cache warm).", "",
        "Rows 1-2 are bound by the client on this machine: fio's nbd engine is one thread, and it runs at "
        "about 100% of one of the two CPUs whichever server it talks to (fio's own CPU above), so no server "
        "can be driven past roughly what the fastest one reaches; the server CPU per I/O is the figure "
        "that compares the servers' own cost.", "",
        "## Commands", "",
        *(f"    {commands.get(k, shlex.join(Server(k, image).argv(10809)))}" for k in keys),
        f"    {shlex.join(fio_argv('nbd://127.0.0.1:PORT/', args.seconds))}",
        "    nbdcopy nbd://127.0.0.1:PORT/ null:", "",
        "(PORT: 0 for strata, which prints the port it took; a free port for the peers.)", "",
        "## Machine", "", *(f"- {k}: {v}" for k, v in machine.items()), "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    log(f"wrote {args.out}")
    return 1 if peer_failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
