#!/usr/bin/env python3
"""QMP scenarios run the same way against qemu-storage-daemon and `strata serve`.

Usage: scenarios.py SOCKET WORKDIR OUTPUT
The daemon is already listening on SOCKET (a Unix monitor socket). Every step is recorded as
{"step": name, "outcome": "ok" | ERROR-CLASS, ...observations}; the transcript goes to OUTPUT as
JSON in OUTPUT. The caller runs this against both daemons and compares the transcripts, so anything this
records must be what QEMU's documentation promises, not an implementation detail.
"""
import asyncio
import json
import os
import socket
import subprocess
import sys

from qemu.qmp import QMPClient, ExecuteError

SOCKET, WORKDIR, OUTPUT = sys.argv[1], sys.argv[2], sys.argv[3]
transcript = []


def record(step, outcome, **observations):
    transcript.append({"step": step, "outcome": outcome, **observations})


def raw_exchange():
    """Talks to the monitor without a client library: greeting, negotiation, bad input."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(SOCKET)
    stream = sock.makefile("rwb", buffering=0)

    def read_message():
        while True:
            line = stream.readline()
            if not line:
                return None
            line = line.strip()
            if line:
                return json.loads(line)

    def send(text):
        stream.write(text.encode() + b"\n")

    greeting = read_message()
    version = greeting["QMP"]["version"]
    record("greeting", "ok", has_qemu_version=all(isinstance(version["qemu"][k], int) for k in ("major", "minor", "micro")),
           capabilities_is_list=isinstance(greeting["QMP"]["capabilities"], list))
    send('{"execute": "query-version", "id": "early"}')
    reply = read_message()
    record("command before qmp_capabilities", reply["error"]["class"], id=reply.get("id"),
           desc=reply["error"]["desc"])
    send('{"execute": "qmp_capabilities"}')
    record("qmp_capabilities", "ok" if read_message().get("return") == {} else "bad")
    send('{"execute": "qmp_capabilities"}')
    reply = read_message()
    record("second qmp_capabilities", reply["error"]["class"], desc=reply["error"]["desc"])
    send('{"execute": "no-such-command", "id": 7}')
    reply = read_message()
    record("unknown command", reply["error"]["class"], id=reply.get("id"))
    send('[1, 2]')
    reply = read_message()
    record("input not an object", reply["error"]["class"], desc=reply["error"]["desc"])
    send('{"execute": "query-version", "arguments": {"bogus": 1}}')
    reply = read_message()
    record("unexpected argument", reply["error"]["class"], desc=reply["error"]["desc"])
    send('{"execute": "query-version", "id": {"nested": [1, "x"]}}')
    reply = read_message()
    record("id echoed", "ok" if "return" in reply else reply["error"]["class"], id=reply.get("id"))
    send('{"execute": "query-version", "nonsense": true}')
    reply = read_message()
    record("unexpected member", reply["error"]["class"])
    send('{"execute": "query-version"}')
    reply = read_message()
    record("monitor alive after bad input", "ok" if "return" in reply else "bad")
    sock.close()


async def command(qmp, step, name, arguments=None, **expect):
    try:
        result = await qmp.execute(name, arguments or {})
        record(step, "ok", **expect)
        return result
    except ExecuteError as error:
        record(step, error.error_class, **expect)
        return None


async def statuses(qmp, job_id, until):
    """The JOB_STATUS_CHANGE statuses of `job_id`, in order, up to and including `until`."""
    seen = []
    async with asyncio.timeout(30):
        async for event in qmp.events:
            if event["event"] == "JOB_STATUS_CHANGE" and event["data"]["id"] == job_id:
                seen.append(event["data"]["status"])
                if event["data"]["status"] == until:
                    return seen
    return seen


def job_list(infos):
    return [{k: v for k, v in info.items()} for info in infos]


async def jobs(qmp):
    """blockdev-create as a job, and the job verbs' errors."""
    created = os.path.join(WORKDIR, "created.qcow2")
    await command(qmp, "blockdev-create file", "blockdev-create",
                  {"job-id": "j0", "options": {"driver": "file", "filename": created, "size": 0}})
    record("blockdev-create file statuses", "ok", statuses=await statuses(qmp, "j0", "concluded"))
    record("query-jobs after create", "ok", jobs=job_list(await qmp.execute("query-jobs", {})))
    await command(qmp, "job-dismiss j0", "job-dismiss", {"id": "j0"})
    record("dismissed", "ok", statuses=await statuses(qmp, "j0", "null"))
    await command(qmp, "blockdev-add the new file", "blockdev-add", {"driver": "file", "node-name": "f9", "filename": created})
    await command(qmp, "blockdev-create qcow2", "blockdev-create",
                  {"job-id": "j1", "options": {"driver": "qcow2", "file": "f9", "size": 64 << 20, "cluster-size": 65536}})
    record("blockdev-create qcow2 statuses", "ok", statuses=await statuses(qmp, "j1", "concluded"))
    record("query-jobs after qcow2", "ok", jobs=job_list(await qmp.execute("query-jobs", {})))
    record("query-block-jobs for a create job", "ok", jobs=await qmp.execute("query-block-jobs", {}))
    await command(qmp, "job-pause of a concluded job", "job-pause", {"id": "j1"})
    await command(qmp, "job-dismiss j1", "job-dismiss", {"id": "j1"})
    await command(qmp, "job-dismiss again", "job-dismiss", {"id": "j1"})
    await command(qmp, "blockdev-create raw with options", "blockdev-create",
                  {"job-id": "j2", "options": {"driver": "raw", "file": "f9", "size": 1}})
    await command(qmp, "blockdev-create empty job id", "blockdev-create",
                  {"job-id": "", "options": {"driver": "file", "filename": created + ".2", "size": 0}})
    await command(qmp, "blockdev-create on a missing node", "blockdev-create",
                  {"job-id": "j3", "options": {"driver": "qcow2", "file": "nothing", "size": 65536}})
    record("failed create statuses", "ok", statuses=await statuses(qmp, "j3", "concluded"))
    record("query-jobs with an error", "ok", jobs=job_list(await qmp.execute("query-jobs", {})))
    await command(qmp, "blockdev-create same job id", "blockdev-create",
                  {"job-id": "j3", "options": {"driver": "file", "filename": created + ".3", "size": 0}})
    await command(qmp, "job-dismiss j3", "job-dismiss", {"id": "j3"})
    await command(qmp, "blockdev-create in a missing directory", "blockdev-create",
                  {"job-id": "j4", "options": {"driver": "file", "filename": "/nonexistent/dir/x", "size": 0}})
    record("create in a missing directory", "ok", statuses=await statuses(qmp, "j4", "concluded"),
           jobs=job_list(await qmp.execute("query-jobs", {})))
    await command(qmp, "job-dismiss j4", "job-dismiss", {"id": "j4"})
    await command(qmp, "job-cancel unknown", "job-cancel", {"id": "nothing"})
    await command(qmp, "block-job-cancel unknown", "block-job-cancel", {"device": "nothing"})
    await command(qmp, "block-job-set-speed unknown", "block-job-set-speed", {"device": "nothing", "speed": 1})
    await command(qmp, "query-jobs when none", "query-jobs", {}, jobs=[])
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", created], capture_output=True, text=True).stdout)
    record("created image", "ok", format=info.get("format"), size=info.get("virtual-size"), cluster=info.get("cluster-size"))
    await command(qmp, "blockdev-del the new file", "blockdev-del", {"node-name": "f9"})
    await stream(qmp)
    await commit(qmp)
    await mirror(qmp)
    await active_commit(qmp)
    await bitmaps(qmp)
    await backup(qmp)
    await error_policies(qmp)
    await snapshots(qmp)


async def job_events(qmp, job_id, until_event=None, until_status=None, completed=None):
    """Statuses and BLOCK_JOB_* event names of `job_id`, up to an event or a status; the data of
    BLOCK_JOB_COMPLETED goes into `completed` (a dict) when given."""
    seen = []
    async with asyncio.timeout(30):
        async for event in qmp.events:
            if event["event"] == "JOB_STATUS_CHANGE" and event["data"]["id"] == job_id:
                seen.append(event["data"]["status"])
                if event["data"]["status"] == until_status:
                    return seen
            elif event["event"].startswith("BLOCK_JOB_") and event["data"].get("device", event["data"].get("id")) == job_id:
                seen.append(event["event"])
                if event["event"] == "BLOCK_JOB_COMPLETED" and completed is not None:
                    completed.update(event["data"])
                if event["event"] == until_event:
                    return seen
    return seen


def completed_shape(completed):
    """BLOCK_JOB_COMPLETED's fields, with lengths reduced to whether they are set."""
    return {k: (v if k not in ("len", "offset") else v > 0) for k, v in completed.items()}


async def mirror(qmp):
    """blockdev-mirror of an exported node: READY, a write, job-complete moves the export to the
    target; then a mirror cancelled without force once READY completes without moving it."""
    nbd_socket = os.path.join(WORKDIR, "nbd.sock")
    paths = {name: os.path.join(WORKDIR, f"m-{name}.qcow2") for name in ("src", "dst", "dst2", "small")}
    for name in ("src", "dst", "dst2"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", paths[name], "16M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", paths["small"], "8M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 4M 64k", paths["src"]],
                   check=True, capture_output=True)
    for name in ("src", "dst", "dst2", "small"):
        await command(qmp, f"blockdev-add mirror {name} file", "blockdev-add",
                      {"driver": "file", "node-name": f"m-{name}-file", "filename": paths[name]})
        await command(qmp, f"blockdev-add mirror {name}", "blockdev-add", {"driver": "qcow2", "node-name": f"m-{name}", "file": f"m-{name}-file"})
    await command(qmp, "export the mirror source", "block-export-add", {"type": "nbd", "id": "e9", "node-name": "m-src", "writable": True})
    await command(qmp, "blockdev-mirror bad sync", "blockdev-mirror", {"job-id": "m9", "device": "m-src", "target": "m-dst", "sync": "bogus"})
    await command(qmp, "blockdev-mirror unknown target", "blockdev-mirror",
                  {"job-id": "m9", "device": "m-src", "target": "nothing", "sync": "full"})
    await command(qmp, "blockdev-mirror", "blockdev-mirror", {"job-id": "m0", "device": "m-src", "target": "m-dst", "sync": "full"})
    record("mirror until ready", "ok", seen=await job_events(qmp, "m0", until_event="BLOCK_JOB_READY"))
    uri = "nbd+unix:///m-src?socket=" + nbd_socket
    write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x33 2M 64k", uri], capture_output=True, text=True)
    record("write while ready", "ok" if write.returncode == 0 else write.stdout + write.stderr)
    await command(qmp, "job-pause of a ready mirror", "job-pause", {"id": "m0"})
    record("paused while ready", "ok", seen=await job_events(qmp, "m0", until_status="standby"))
    await command(qmp, "job-pause again", "job-pause", {"id": "m0"})
    await command(qmp, "job-complete while paused", "job-complete", {"id": "m0"})
    jobs = await qmp.execute("query-block-jobs", {})
    record("query-block-jobs while paused", "ok", jobs=[(j["device"], j["status"], j["paused"], j["ready"], j["type"]) for j in jobs])
    await command(qmp, "job-resume", "job-resume", {"id": "m0"})
    # The job-complete given while paused takes effect once resumed.
    record("mirror pivot", "ok", seen=await job_events(qmp, "m0", until_status="null"))
    await command(qmp, "job-resume after the pivot", "job-resume", {"id": "m0"})
    await command(qmp, "job-complete after the pivot", "job-complete", {"id": "m0"})
    exports = await qmp.execute("query-block-exports", {})
    record("export after the pivot", "ok", nodes=sorted(e["node-name"] for e in exports))
    read = subprocess.run(["qemu-io", "-f", "raw", "-r", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x33 2M 64k", "-c", "read -P 0x22 4M 64k",
                           uri], capture_output=True, text=True)
    record("reads after the pivot", "ok" if read.returncode == 0 and "fail" not in read.stdout else read.stdout + read.stderr)
    await command(qmp, "blockdev-mirror write-blocking, to be cancelled", "blockdev-mirror",
                  {"job-id": "m1", "device": "m-dst", "target": "m-dst2", "sync": "full", "copy-mode": "write-blocking"})
    record("second mirror until ready", "ok", seen=await job_events(qmp, "m1", until_event="BLOCK_JOB_READY"))
    await command(qmp, "pause the write-blocking mirror", "job-pause", {"id": "m1"})
    record("write-blocking mirror paused", "ok", seen=await job_events(qmp, "m1", until_status="standby"))
    write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x66 6M 64k", uri], capture_output=True, text=True)
    record("write while the write-blocking mirror is paused", "ok" if write.returncode == 0 else write.stdout + write.stderr)
    await command(qmp, "resume the write-blocking mirror", "job-resume", {"id": "m1"})
    record("write-blocking mirror resumed", "ok", seen=await job_events(qmp, "m1", until_status="ready"))
    await command(qmp, "block-job-cancel of a ready mirror", "block-job-cancel", {"device": "m1"})
    record("cancelled without force", "ok", seen=await job_events(qmp, "m1", until_status="null"))
    exports = await qmp.execute("query-block-exports", {})
    record("export stays", "ok", nodes=sorted(e["node-name"] for e in exports))
    await command(qmp, "block-export-del e9", "block-export-del", {"id": "e9"})
    async with asyncio.timeout(20):
        async for received in qmp.events:
            if received["event"] == "BLOCK_EXPORT_DELETED":
                break
    for name in ("src", "dst", "dst2", "small"):
        await command(qmp, f"blockdev-del mirror {name}", "blockdev-del", {"node-name": f"m-{name}"})
        await command(qmp, f"blockdev-del mirror {name} file", "blockdev-del", {"node-name": f"m-{name}-file"})
    reads = {}
    for name in ("dst", "dst2"):
        run = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x33 2M 64k",
                              "-c", "read -P 0x22 4M 64k", "-c", "read -P 0x66 6M 64k", paths[name]], capture_output=True, text=True)
        reads[name] = "ok" if run.returncode == 0 and "fail" not in run.stdout else "differs"
    checks = [subprocess.run(["qemu-img", "check", paths[n]], capture_output=True, text=True).returncode for n in ("src", "dst", "dst2")]
    record("mirror targets", "ok", reads=reads, checks=checks)


def without_drain_pauses(seen):
    """QEMU's backup goes running -> paused -> running when its filter's insertion drains the
    node, with no pause command (qsd-qmp-facts.md); the statuses a client can rely on are the
    others."""
    out = []
    for status in seen:
        if status == "running" and out[-1:] == ["paused"] and out[-2:-1] == ["running"]:
            out.pop()
            continue
        out.append(status)
    return out


def named_bitmaps(nodes, node):
    """A node's named bitmaps as query-named-block-nodes lists them (jobs' own are unnamed)."""
    entry = next((n for n in nodes if n["node-name"] == node), {})
    return [b for b in entry.get("dirty-bitmaps", []) if "name" in b]


async def bitmaps(qmp):
    """Dirty bitmaps: add/clear/enable/disable/merge/remove with QEMU's checks, counted by
    writes over NBD, in transactions, exported as qemu:dirty-bitmap, persistent in the image."""
    nbd_socket = os.path.join(WORKDIR, "nbd.sock")
    image = os.path.join(WORKDIR, "bm.qcow2")
    raw = os.path.join(WORKDIR, "bm.raw")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "64M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", raw, "64M"], check=True)
    await command(qmp, "blockdev-add bitmap qcow2", "blockdev-add",
                  {"driver": "qcow2", "node-name": "bm", "file": {"driver": "file", "filename": image, "node-name": "bm-file"}})
    await command(qmp, "blockdev-add bitmap raw", "blockdev-add",
                  {"driver": "raw", "node-name": "bmr", "file": {"driver": "file", "filename": raw, "node-name": "bmr-file"}})
    await command(qmp, "bitmap add", "block-dirty-bitmap-add", {"node": "bm", "name": "b0"})
    await command(qmp, "bitmap add persistent", "block-dirty-bitmap-add", {"node": "bm", "name": "b1", "persistent": True, "granularity": 131072})
    await command(qmp, "bitmap add disabled", "block-dirty-bitmap-add", {"node": "bm", "name": "b2", "disabled": True, "persistent": True})
    await command(qmp, "bitmap add existing", "block-dirty-bitmap-add", {"node": "bm", "name": "b0"})
    await command(qmp, "bitmap add empty name", "block-dirty-bitmap-add", {"node": "bm", "name": ""})
    await command(qmp, "bitmap add long name", "block-dirty-bitmap-add", {"node": "bm", "name": "x" * 1024})
    await command(qmp, "bitmap add bad granularity", "block-dirty-bitmap-add", {"node": "bm", "name": "g", "granularity": 1000})
    await command(qmp, "bitmap add persistent on raw", "block-dirty-bitmap-add", {"node": "bmr", "name": "p", "persistent": True})
    await command(qmp, "bitmap add on raw", "block-dirty-bitmap-add", {"node": "bmr", "name": "rb"})
    await command(qmp, "bitmap add on a missing node", "block-dirty-bitmap-add", {"node": "nothing", "name": "x"})
    await command(qmp, "export the bitmap node", "block-export-add", {"type": "nbd", "id": "eb", "node-name": "bm", "writable": True})
    write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write 0 4k", "-c", "write 1M 70k", "-c", "write 60M 1M",
                            "nbd+unix:///bm?socket=" + nbd_socket], capture_output=True, text=True)
    record("writes counted by bitmaps", "ok" if write.returncode == 0 else write.stderr,
           bitmaps=named_bitmaps(await qmp.execute("query-named-block-nodes", {}), "bm"))
    await command(qmp, "bitmap merge", "block-dirty-bitmap-merge", {"node": "bm", "target": "b2", "bitmaps": ["b0"]})
    await command(qmp, "bitmap merge unknown source", "block-dirty-bitmap-merge", {"node": "bm", "target": "b1", "bitmaps": ["nope"]})
    await command(qmp, "bitmap merge from another node", "block-dirty-bitmap-merge",
                  {"node": "bm", "target": "b1", "bitmaps": [{"node": "bmr", "name": "rb"}]})
    await command(qmp, "bitmap disable", "block-dirty-bitmap-disable", {"node": "bm", "name": "b1"})
    await command(qmp, "bitmap enable unknown", "block-dirty-bitmap-enable", {"node": "bm", "name": "nope"})
    await command(qmp, "bitmap remove unknown", "block-dirty-bitmap-remove", {"node": "bm", "name": "nope"})
    await command(qmp, "bitmap clear", "block-dirty-bitmap-clear", {"node": "bm", "name": "b0"})
    await command(qmp, "bitmap remove", "block-dirty-bitmap-remove", {"node": "bmr", "name": "rb"})
    await command(qmp, "transaction with a failing bitmap action", "transaction",
                  {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "bm", "name": "t1"}},
                               {"type": "block-dirty-bitmap-clear", "data": {"node": "bm", "name": "b2"}},
                               {"type": "block-dirty-bitmap-add", "data": {"node": "bm", "name": "b0"}}]})
    record("nothing of a failed transaction", "ok", bitmaps=named_bitmaps(await qmp.execute("query-named-block-nodes", {}), "bm"))
    await command(qmp, "transaction of bitmap actions", "transaction",
                  {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "bm", "name": "t1", "disabled": True}},
                               {"type": "block-dirty-bitmap-merge", "data": {"node": "bm", "target": "t1", "bitmaps": ["b2"]}},
                               {"type": "block-dirty-bitmap-enable", "data": {"node": "bm", "name": "b1"}}]})
    record("bitmaps after the transaction", "ok", bitmaps=named_bitmaps(await qmp.execute("query-named-block-nodes", {}), "bm"))
    await command(qmp, "export a bitmap read-write", "block-export-add",
                  {"type": "nbd", "id": "ebm", "node-name": "bm", "name": "bm-t1", "writable": True, "bitmaps": ["t1", "nope"]})
    await command(qmp, "export an enabled bitmap read-only", "block-export-add",
                  {"type": "nbd", "id": "ebm", "node-name": "bm", "name": "bm-t1", "bitmaps": ["b1"]})
    await command(qmp, "export a bitmap", "block-export-add", {"type": "nbd", "id": "ebm", "node-name": "bm", "name": "bm-t1", "bitmaps": ["t1"]})
    await command(qmp, "clear an exported bitmap", "block-dirty-bitmap-clear", {"node": "bm", "name": "t1"})
    dirty = subprocess.run(["nbdinfo", "--map=qemu:dirty-bitmap:t1", "nbd+unix:///bm-t1?socket=" + nbd_socket], capture_output=True, text=True)
    record("qemu:dirty-bitmap over NBD", "ok" if dirty.returncode == 0 else dirty.stderr,
           map=[line.split() for line in dirty.stdout.splitlines()])
    for export in ("ebm", "eb"):
        await command(qmp, f"block-export-del {export}", "block-export-del", {"id": export})
        async with asyncio.timeout(20):
            async for received in qmp.events:
                if received["event"] == "BLOCK_EXPORT_DELETED":
                    break
    for node in ("bm", "bmr"):
        await command(qmp, f"blockdev-del {node}", "blockdev-del", {"node-name": node})
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", image], capture_output=True, text=True).stdout)
    check = subprocess.run(["qemu-img", "check", image], capture_output=True, text=True)
    record("persistent bitmaps in the image", "ok", bitmaps=info["format-specific"]["data"].get("bitmaps"), check=check.returncode)
    await command(qmp, "blockdev-add the image again", "blockdev-add",
                  {"driver": "qcow2", "node-name": "bm", "file": {"driver": "file", "filename": image, "node-name": "bm-file2"}})
    record("persistent bitmaps loaded", "ok", bitmaps=named_bitmaps(await qmp.execute("query-named-block-nodes", {}), "bm"))
    await command(qmp, "remove a persistent bitmap", "block-dirty-bitmap-remove", {"node": "bm", "name": "b2"})
    await command(qmp, "blockdev-del bm again", "blockdev-del", {"node-name": "bm"})
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", image], capture_output=True, text=True).stdout)
    check = subprocess.run(["qemu-img", "check", image], capture_output=True, text=True)
    record("persistent bitmap removed", "ok", bitmaps=info["format-specific"]["data"].get("bitmaps"), check=check.returncode)


async def backup(qmp):
    """blockdev-backup: a full backup started in one transaction with a new bitmap, guest writes,
    an incremental backup of what the bitmap counted, then image fleecing: a sync=none backup into
    an overlay of the source, read through snapshot-access over NBD by qemu-img convert while
    the guest writes."""
    nbd_socket = os.path.join(WORKDIR, "nbd.sock")
    paths = {name: os.path.join(WORKDIR, f"bk-{name}.qcow2") for name in ("src", "full", "inc", "fleece", "fleeced", "small")}
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", paths["src"], "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 10M 512k", paths["src"]],
                   check=True, capture_output=True)
    for name in ("full", "fleece"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", paths[name], "64M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", paths["small"], "32M"], check=True)
    for name in ("src", "full", "small"):
        await command(qmp, f"blockdev-add backup {name}", "blockdev-add",
                      {"driver": "qcow2", "node-name": f"bk-{name}", "file": {"driver": "file", "filename": paths[name]}})
    await command(qmp, "export the backup source", "block-export-add", {"type": "nbd", "id": "ebk", "node-name": "bk-src", "writable": True})
    uri = "nbd+unix:///bk-src?socket=" + nbd_socket
    await command(qmp, "blockdev-backup incremental without bitmap", "blockdev-backup",
                  {"job-id": "bk9", "device": "bk-src", "target": "bk-full", "sync": "incremental"})
    await command(qmp, "blockdev-backup bitmap without mode", "blockdev-backup",
                  {"job-id": "bk9", "device": "bk-src", "target": "bk-full", "sync": "bitmap", "bitmap": "nope"})
    await command(qmp, "blockdev-backup mode without bitmap", "blockdev-backup",
                  {"job-id": "bk9", "device": "bk-src", "target": "bk-full", "sync": "full", "bitmap-mode": "always"})
    await command(qmp, "blockdev-backup to a smaller target", "blockdev-backup",
                  {"job-id": "bk9", "device": "bk-src", "target": "bk-small", "sync": "full"})
    await command(qmp, "transaction: bitmap and full backup", "transaction",
                  {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "bk-src", "name": "inc0", "persistent": True}},
                               {"type": "blockdev-backup", "data": {"job-id": "bk0", "device": "bk-src", "target": "bk-full", "sync": "full"}}]})
    completed = {}
    seen = await job_events(qmp, "bk0", until_status="null", completed=completed)
    record("full backup", "ok", seen=without_drain_pauses(seen), completed=completed)
    write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x33 2M 64k", "-c", "write -P 0x44 20M 128k", uri],
                           capture_output=True, text=True)
    record("writes after the full backup", "ok" if write.returncode == 0 else write.stderr,
           bitmaps=named_bitmaps(await qmp.execute("query-named-block-nodes", {}), "bk-src"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", paths["full"], "-F", "qcow2", paths["inc"]], check=True)
    await command(qmp, "blockdev-add incremental target", "blockdev-add",
                  {"driver": "qcow2", "node-name": "bk-inc", "backing": None, "file": {"driver": "file", "filename": paths["inc"]}})
    await command(qmp, "incremental backup", "blockdev-backup",
                  {"job-id": "bk1", "device": "bk-src", "target": "bk-inc", "sync": "incremental", "bitmap": "inc0"})
    completed = {}
    seen = await job_events(qmp, "bk1", until_status="null", completed=completed)
    record("incremental backup", "ok", seen=without_drain_pauses(seen), completed=completed,
           bitmaps=named_bitmaps(await qmp.execute("query-named-block-nodes", {}), "bk-src"))
    # Fleecing.
    await command(qmp, "blockdev-add fleecing overlay", "blockdev-add",
                  {"driver": "qcow2", "node-name": "bk-fleece", "backing": "bk-src", "file": {"driver": "file", "filename": paths["fleece"]}})
    await command(qmp, "fleecing backup", "blockdev-backup",
                  {"job-id": "bk2", "device": "bk-src", "target": "bk-fleece", "sync": "none", "filter-node-name": "bk-cbw"})
    seen = await job_events(qmp, "bk2", until_status="running")
    await command(qmp, "blockdev-add snapshot-access", "blockdev-add", {"driver": "snapshot-access", "node-name": "bk-snap", "file": "bk-cbw"})
    await command(qmp, "export the snapshot", "block-export-add", {"type": "nbd", "id": "efl", "node-name": "bk-snap"})
    write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x55 0 2M", "-c", "write -P 0x66 30M 64k", uri], capture_output=True, text=True)
    convert = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "nbd+unix:///bk-snap?socket=" + nbd_socket, paths["fleeced"]],
                             capture_output=True, text=True)
    record("fleecing while the guest writes", "ok" if write.returncode == 0 and convert.returncode == 0 else write.stderr + convert.stderr)
    await command(qmp, "block-export-del efl", "block-export-del", {"id": "efl"})
    async with asyncio.timeout(20):
        async for received in qmp.events:
            if received["event"] == "BLOCK_EXPORT_DELETED":
                break
    await command(qmp, "blockdev-del snapshot-access", "blockdev-del", {"node-name": "bk-snap"})
    await command(qmp, "cancel the fleecing backup", "block-job-cancel", {"device": "bk2"})
    completed = {}
    seen += await job_events(qmp, "bk2", until_status="null", completed=completed)
    record("fleecing backup ends", "ok", seen=without_drain_pauses(seen), completed=completed)
    await command(qmp, "block-export-del ebk", "block-export-del", {"id": "ebk"})
    async with asyncio.timeout(20):
        async for received in qmp.events:
            if received["event"] == "BLOCK_EXPORT_DELETED":
                break
    for name in ("fleece", "inc", "full", "small", "src"):
        await command(qmp, f"blockdev-del backup {name}", "blockdev-del", {"node-name": f"bk-{name}"})

    def reads(path, pattern_args):
        run = subprocess.run(["qemu-io", "-f", "qcow2", "-r"] + pattern_args + [path], capture_output=True, text=True)
        return "ok" if run.returncode == 0 and "fail" not in run.stdout else run.stdout + run.stderr

    checks = {n: subprocess.run(["qemu-img", "check", paths[n]], capture_output=True, text=True).returncode
              for n in ("src", "full", "inc", "fleeced")}
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", paths["src"]], capture_output=True, text=True).stdout)
    record("backup images", "ok", checks=checks, source_bitmaps=info["format-specific"]["data"].get("bitmaps"),
           full=reads(paths["full"], ["-c", "read -P 0x11 0 1M", "-c", "read -P 0 2M 64k", "-c", "read -P 0x22 10M 512k"]),
           inc=reads(paths["inc"], ["-c", "read -P 0x11 0 1M", "-c", "read -P 0x33 2M 64k", "-c", "read -P 0x22 10M 512k",
                                    "-c", "read -P 0x44 20M 128k"]),
           fleeced=reads(paths["fleeced"], ["-c", "read -P 0x11 0 1M", "-c", "read -P 0x33 2M 64k", "-c", "read -P 0x44 20M 128k",
                                            "-c", "read -P 0 30M 64k"]),
           full_equals_snapshot=subprocess.run(["qemu-img", "compare", "-q", paths["full"], paths["inc"]]).returncode != 0)


async def error_policies(qmp):
    """on-target-error / on-error policies with errors injected by blkdebug (one failed write or
    read, `once`): mirror with stop (paused with io-status failed until job-resume, then READY),
    report, ignore, enospc with EIO and with ENOSPC; backup with stop and report; stream with stop
    and ignore (which still fails the job at the end, as QEMU's stream)."""
    source = os.path.join(WORKDIR, "ep-src.raw")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", source, "4M"], check=True)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4M", source], check=True, capture_output=True)
    await command(qmp, "blockdev-add error source", "blockdev-add", {"driver": "raw", "node-name": "ep-src", "file": {"driver": "file", "filename": source}})
    await command(qmp, "blkdebug with an unknown event", "blockdev-add",
                  {"driver": "raw", "node-name": "ep-bad", "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": source},
                                                                     "inject-error": [{"event": "nonsense"}]}})
    cases = [("epm1", "mirror", "stop", 5), ("epm2", "mirror", "report", 5), ("epm3", "mirror", "ignore", 5),
             ("epm4", "mirror", "enospc", 5), ("epm5", "mirror", "enospc", 28), ("epr1", "mirror-source", "stop", 5),
             ("epr2", "mirror-source", "report", 5), ("epb1", "backup", "stop", 5), ("epb2", "backup", "report", 28),
             ("eps1", "stream", "stop", 5), ("eps2", "stream", "ignore", 5)]

    async def until(job, *names):
        seen = []
        async with asyncio.timeout(30):
            async for event in qmp.events:
                data = event["data"]
                if event["event"] == "JOB_STATUS_CHANGE" and data["id"] == job:
                    seen.append(data["status"])
                    if data["status"] in names:
                        return seen
                elif event["event"].startswith("BLOCK_JOB_") and data.get("device") == job:
                    seen.append([event["event"], data.get("action", ""), data.get("operation", ""), data.get("error", "")])
                    if event["event"] in names:
                        return seen
        return seen

    for job, kind, policy, errno in cases:
        target = os.path.join(WORKDIR, f"{job}.raw")
        inject = [{"event": "read_aio" if kind in ("stream", "mirror-source") else "write_aio", "errno": errno, "once": True}]
        if kind == "stream":
            # top (empty qcow2) over a raw base whose first read fails.
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", source, "-F", "raw", target], check=True)
            await command(qmp, f"{job}: blockdev-add base", "blockdev-add",
                          {"driver": "raw", "node-name": f"{job}-base", "read-only": True,
                           "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": source, "read-only": True},
                                    "inject-error": inject}})
            await command(qmp, f"{job}: blockdev-add top", "blockdev-add",
                          {"driver": "qcow2", "node-name": f"{job}-top", "backing": f"{job}-base", "file": {"driver": "file", "filename": target}})
            await command(qmp, f"{job}: block-stream", "block-stream", {"job-id": job, "device": f"{job}-top", "on-error": policy})
        elif kind == "mirror-source":
            # A copy of the source whose first read fails, mirrored into a plain target.
            copy = os.path.join(WORKDIR, f"{job}-src.raw")
            subprocess.run(["cp", source, copy], check=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "raw", target, "4M"], check=True)
            await command(qmp, f"{job}: blockdev-add source", "blockdev-add",
                          {"driver": "raw", "node-name": f"{job}-src",
                           "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": copy}, "inject-error": inject}})
            await command(qmp, f"{job}: blockdev-add target", "blockdev-add",
                          {"driver": "raw", "node-name": job, "file": {"driver": "file", "filename": target}})
            await command(qmp, f"{job}: blockdev-mirror", "blockdev-mirror",
                          {"job-id": job, "device": f"{job}-src", "target": job, "sync": "full", "on-source-error": policy})
        else:
            subprocess.run(["qemu-img", "create", "-q", "-f", "raw", target, "4M"], check=True)
            await command(qmp, f"{job}: blockdev-add target", "blockdev-add",
                          {"driver": "raw", "node-name": job, "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": target},
                                                                       "inject-error": inject}})
            command_name = "blockdev-mirror" if kind == "mirror" else "blockdev-backup"
            await command(qmp, f"{job}: {command_name}", command_name,
                          {"job-id": job, "device": "ep-src", "target": job, "sync": "full", "on-target-error": policy})
        seen = await until(job, "BLOCK_JOB_ERROR", "BLOCK_JOB_READY", "null")
        stopped = None
        if seen and seen[-1][0] == "BLOCK_JOB_ERROR":
            if seen[-1][1] == "stop":
                # The pause takes effect at the job's next pause point.
                for _ in range(200):
                    jobs = [j for j in await qmp.execute("query-block-jobs", {}) if j["device"] == job]
                    if jobs and jobs[0]["status"] == "paused":
                        break
                    await asyncio.sleep(0.01)
                stopped = [(j["status"], j["io-status"], j["paused"]) for j in jobs]
                await command(qmp, f"{job}: job-resume", "job-resume", {"id": job})
            seen += await until(job, "BLOCK_JOB_READY", "null")
        if seen and seen[-1][0] == "BLOCK_JOB_READY":
            await command(qmp, f"{job}: block-job-cancel once ready", "block-job-cancel", {"device": job})
            seen += await until(job, "null")
        copy = target if kind != "stream" else None
        same = None
        if copy:
            same = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", source, copy]).returncode
        record(f"{job}: {kind} with {policy} after errno {errno}", "ok", seen=without_drain_pauses(seen), stopped=stopped, target_equal=same)
        nodes = {"stream": [f"{job}-top", f"{job}-base"], "mirror-source": [job, f"{job}-src"]}.get(kind, [job])
        for node in nodes:
            await command(qmp, f"{job}: blockdev-del {node}", "blockdev-del", {"node-name": node})
    # Grouped completion: when one backup of the transaction fails, the other is cancelled.
    for name in ("epg1", "epg2"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", os.path.join(WORKDIR, f"{name}.raw"), "4M"], check=True)
    await command(qmp, "grouped: blockdev-add target", "blockdev-add",
                  {"driver": "raw", "node-name": "epg1", "file": {"driver": "file", "filename": os.path.join(WORKDIR, "epg1.raw")}})
    await command(qmp, "grouped: blockdev-add failing target", "blockdev-add",
                  {"driver": "raw", "node-name": "epg2", "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": os.path.join(WORKDIR, "epg2.raw")},
                                                                  "inject-error": [{"event": "write_aio", "errno": 5}]}})
    await command(qmp, "grouped transaction of two backups", "transaction",
                  {"actions": [{"type": "blockdev-backup", "data": {"job-id": "epg1", "device": "ep-src", "target": "epg1", "sync": "full"}},
                               {"type": "blockdev-backup", "data": {"job-id": "epg2", "device": "ep-src", "target": "epg2", "sync": "full"}}],
                   "properties": {"completion-mode": "grouped"}})
    ends = {}
    async with asyncio.timeout(30):
        async for event in qmp.events:
            if event["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED") and event["data"]["device"] in ("epg1", "epg2"):
                ends[event["data"]["device"]] = [event["event"], event["data"].get("error", "")]
                if len(ends) == 2:
                    break
    record("grouped: one fails, both end", "ok", ends=ends)
    for name in ("epg1", "epg2"):
        await command(qmp, f"grouped: blockdev-del {name}", "blockdev-del", {"node-name": name})
    await command(qmp, "blockdev-del error source", "blockdev-del", {"node-name": "ep-src"})


async def snapshots(qmp):
    """External snapshots: blockdev-snapshot-sync of an exported node (the export then writes the
    overlay), blockdev-snapshot onto an overlay added by the client, both in one transaction over
    two nodes, and their errors; the images by qemu-img."""
    nbd_socket = os.path.join(WORKDIR, "nbd.sock")
    paths = {name: os.path.join(WORKDIR, f"sn-{name}.qcow2") for name in ("a", "b", "a1", "a2", "b1", "a3")}
    for name in ("a", "b"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", paths[name], "8M"], check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", paths[name]], check=True, capture_output=True)
        await command(qmp, f"snapshots: blockdev-add {name}", "blockdev-add",
                      {"driver": "qcow2", "node-name": f"sn-{name}", "file": {"driver": "file", "filename": paths[name]}})
    await command(qmp, "snapshots: export a", "block-export-add", {"type": "nbd", "id": "esn", "node-name": "sn-a", "writable": True})
    await command(qmp, "blockdev-snapshot-sync of a missing node", "blockdev-snapshot-sync",
                  {"node-name": "nothing", "snapshot-file": paths["a1"], "snapshot-node-name": "sn-a1"})
    await command(qmp, "blockdev-snapshot-sync with a taken node name", "blockdev-snapshot-sync",
                  {"node-name": "sn-a", "snapshot-file": paths["a1"], "snapshot-node-name": "sn-b"})
    await command(qmp, "blockdev-snapshot-sync", "blockdev-snapshot-sync",
                  {"node-name": "sn-a", "snapshot-file": paths["a1"], "snapshot-node-name": "sn-a1"})
    write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x22 64k 64k", "nbd+unix:///sn-a?socket=" + nbd_socket],
                           capture_output=True, text=True)
    exports = await qmp.execute("query-block-exports", {})
    nodes = {n["node-name"]: n for n in await qmp.execute("query-named-block-nodes", {})}
    record("after blockdev-snapshot-sync", "ok" if write.returncode == 0 else write.stderr,
           export=[e["node-name"] for e in exports if e["id"] == "esn"],
           overlay_backing=os.path.basename(nodes.get("sn-a1", {}).get("backing_file", "")),
           depth=nodes.get("sn-a1", {}).get("backing_file_depth"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", paths["a1"], "-F", "qcow2", paths["a2"]], check=True)
    await command(qmp, "snapshots: blockdev-add overlay a2", "blockdev-add",
                  {"driver": "qcow2", "node-name": "sn-a2", "backing": None, "file": {"driver": "file", "filename": paths["a2"]}})
    await command(qmp, "blockdev-snapshot onto an overlay with a backing", "blockdev-snapshot", {"node": "sn-a", "overlay": "sn-a1"})
    await command(qmp, "snapshots: transaction of two", "transaction", {"actions": [
        {"type": "blockdev-snapshot", "data": {"node": "sn-a1", "overlay": "sn-a2"}},
        {"type": "blockdev-snapshot-sync", "data": {"node-name": "sn-b", "snapshot-file": paths["b1"], "snapshot-node-name": "sn-b1"}}]})
    await command(qmp, "snapshots: failing transaction", "transaction", {"actions": [
        {"type": "blockdev-snapshot-sync", "data": {"node-name": "sn-a2", "snapshot-file": paths["a3"], "snapshot-node-name": "sn-a3"}},
        {"type": "blockdev-snapshot-sync", "data": {"node-name": "nothing", "snapshot-file": paths["b1"], "snapshot-node-name": "sn-x"}}]})
    write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x33 128k 64k", "nbd+unix:///sn-a?socket=" + nbd_socket],
                           capture_output=True, text=True)
    exports = await qmp.execute("query-block-exports", {})
    nodes = {n["node-name"]: n for n in await qmp.execute("query-named-block-nodes", {})}
    record("after the transaction", "ok" if write.returncode == 0 else write.stderr,
           export=[e["node-name"] for e in exports if e["id"] == "esn"], a3_exists="sn-a3" in nodes,
           depths={n: nodes.get(n, {}).get("backing_file_depth") for n in ("sn-a2", "sn-b1")})
    await command(qmp, "snapshots: block-export-del", "block-export-del", {"id": "esn"})
    async with asyncio.timeout(20):
        async for received in qmp.events:
            if received["event"] == "BLOCK_EXPORT_DELETED":
                break
    for node in ("sn-a2", "sn-a1", "sn-a", "sn-b1", "sn-b"):
        await command(qmp, f"snapshots: blockdev-del {node}", "blockdev-del", {"node-name": node})
    infos = {n: json.loads(subprocess.run(["qemu-img", "info", "--output=json", paths[n]], capture_output=True, text=True).stdout)
             for n in ("a1", "a2", "b1")}
    reads = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0x11 0 64k", "-c", "read -P 0x22 64k 64k",
                            "-c", "read -P 0x33 128k 64k", paths["a2"]], capture_output=True, text=True)
    base = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0x11 0 1M", paths["a"]], capture_output=True, text=True)
    checks = [subprocess.run(["qemu-img", "check", paths[n]], capture_output=True, text=True).returncode for n in ("a", "a1", "a2", "b", "b1")]
    record("snapshot images", "ok", backings={n: (os.path.basename(i.get("backing-filename", "")), i.get("backing-filename-format"))
                                              for n, i in infos.items()},
           reads="ok" if reads.returncode == 0 and "fail" not in reads.stdout else reads.stdout,
           base="ok" if base.returncode == 0 and "fail" not in base.stdout else base.stdout, checks=checks)


async def active_commit(qmp):
    """block-commit of an exported active layer: READY, a write, job-complete moves the export
    to the base."""
    nbd_socket = os.path.join(WORKDIR, "nbd.sock")
    paths = {name: os.path.join(WORKDIR, f"a-{name}.qcow2") for name in ("base", "top")}
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", paths["base"], "16M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", paths["base"]], check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", paths["base"], "-F", "qcow2", paths["top"]], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x44 2M 64k", paths["top"]], check=True, capture_output=True)
    for name, backing in (("base", None), ("top", "a-base")):
        await command(qmp, f"blockdev-add active {name} file", "blockdev-add",
                      {"driver": "file", "node-name": f"a-{name}-file", "filename": paths[name]})
        await command(qmp, f"blockdev-add active {name}", "blockdev-add",
                      {"driver": "qcow2", "node-name": f"a-{name}", "file": f"a-{name}-file", "backing": backing})
    await command(qmp, "export the active layer", "block-export-add", {"type": "nbd", "id": "e8", "node-name": "a-top", "writable": True})
    await command(qmp, "block-commit of the active layer", "block-commit", {"job-id": "ac", "device": "a-top"})
    record("active commit until ready", "ok", seen=await job_events(qmp, "ac", until_event="BLOCK_JOB_READY"))
    uri = "nbd+unix:///a-top?socket=" + nbd_socket
    write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x55 3M 64k", uri], capture_output=True, text=True)
    record("write while committing", "ok" if write.returncode == 0 else write.stdout + write.stderr)
    await command(qmp, "job-complete of the active commit", "job-complete", {"id": "ac"})
    record("active commit pivot", "ok", seen=await job_events(qmp, "ac", until_status="null"))
    exports = await qmp.execute("query-block-exports", {})
    record("export after the active commit", "ok", nodes=sorted(e["node-name"] for e in exports if e["id"] == "e8"))
    await command(qmp, "block-export-del e8", "block-export-del", {"id": "e8"})
    async with asyncio.timeout(20):
        async for received in qmp.events:
            if received["event"] == "BLOCK_EXPORT_DELETED":
                break
    for name in ("top", "base"):
        await command(qmp, f"blockdev-del active {name}", "blockdev-del", {"node-name": f"a-{name}"})
        await command(qmp, f"blockdev-del active {name} file", "blockdev-del", {"node-name": f"a-{name}-file"})
    read = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x44 2M 64k",
                           "-c", "read -P 0x55 3M 64k", paths["base"]], capture_output=True, text=True)
    check = subprocess.run(["qemu-img", "check", paths["base"]], capture_output=True, text=True)
    record("base after the active commit", "ok", reads="ok" if read.returncode == 0 and "fail" not in read.stdout else "differs",
           check=check.returncode)


async def commit(qmp):
    """block-commit of the middle of a named chain base <- mid <- top into base."""
    paths = {name: os.path.join(WORKDIR, f"c-{name}.qcow2") for name in ("base", "mid", "top")}
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", paths["base"], "16M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 1M 64k", paths["base"]],
                   check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", paths["base"], "-F", "qcow2", paths["mid"]], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 4k", "-c", "write -P 0x55 4M 128k", "-c", "write -z 8M 64k",
                    paths["mid"]], check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", paths["mid"], "-F", "qcow2", paths["top"]], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x44 2M 4k", paths["top"]], check=True, capture_output=True)
    for name, backing in (("base", None), ("mid", "c-base"), ("top", "c-mid")):
        await command(qmp, f"blockdev-add commit {name} file", "blockdev-add",
                      {"driver": "file", "node-name": f"c-{name}-file", "filename": paths[name]})
        await command(qmp, f"blockdev-add commit {name}", "blockdev-add",
                      {"driver": "qcow2", "node-name": f"c-{name}", "file": f"c-{name}-file", "backing": backing})
    await command(qmp, "block-commit unknown device", "block-commit", {"job-id": "c9", "device": "nothing", "top-node": "c-mid"})
    await command(qmp, "block-commit base above top", "block-commit",
                  {"job-id": "c9", "device": "c-top", "top-node": "c-base", "base-node": "c-mid"})
    await command(qmp, "block-commit", "block-commit", {"job-id": "c0", "device": "c-top", "top-node": "c-mid", "base-node": "c-base"})
    completed = {}
    seen = await job_events(qmp, "c0", until_status="null", completed=completed)
    record("block-commit statuses and events", "ok", seen=seen, completed=completed_shape(completed),
           whole=bool(completed and completed["len"] == completed["offset"]))
    nodes = {n["node-name"]: n for n in await qmp.execute("query-named-block-nodes", {})}
    top = nodes.get("c-top", {})
    record("commit result in the graph", "ok", backing=os.path.basename(top.get("backing_file", "")), depth=top.get("backing_file_depth"))
    for name in ("top", "mid", "base"):
        await command(qmp, f"blockdev-del commit {name}", "blockdev-del", {"node-name": f"c-{name}"})
        await command(qmp, f"blockdev-del commit {name} file", "blockdev-del", {"node-name": f"c-{name}-file"})
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", paths["top"]], capture_output=True, text=True).stdout)
    mapped = json.loads(subprocess.run(["qemu-img", "map", "--output=json", paths["base"]], capture_output=True, text=True).stdout)
    read = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0x11 0 64k", "-c", "read -P 0x33 1M 4k",
                           "-c", "read -P 0x22 1028k 60k", "-c", "read -P 0x44 2M 4k", "-c", "read -P 0x55 4M 128k",
                           "-c", "read -P 0 8M 64k", paths["top"]], capture_output=True, text=True)
    checks = [subprocess.run(["qemu-img", "check", paths[n]], capture_output=True, text=True).returncode for n in ("base", "top")]
    record("committed images", "ok", backing=os.path.basename(info.get("backing-filename", "")), format=info.get("backing-filename-format"),
           base_map=[(m["start"], m["length"], m["depth"], m["data"], m["zero"]) for m in mapped],
           reads="ok" if read.returncode == 0 and "fail" not in read.stdout else read.stdout + read.stderr, checks=checks)


async def stream(qmp):
    """block-stream of a named chain base <- mid <- top into top, down to base."""
    paths = {name: os.path.join(WORKDIR, f"s-{name}.qcow2") for name in ("base", "mid", "top")}
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", paths["base"], "16M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 1M 64k", paths["base"]],
                   check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", paths["base"], "-F", "qcow2", paths["mid"]], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 4k", "-c", "write -P 0x55 4M 128k", paths["mid"]],
                   check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", paths["mid"], "-F", "qcow2", paths["top"]], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x44 2M 4k", paths["top"]], check=True, capture_output=True)
    for name, backing in (("base", None), ("mid", "s-base"), ("top", "s-mid")):
        await command(qmp, f"blockdev-add {name} file", "blockdev-add", {"driver": "file", "node-name": f"s-{name}-file", "filename": paths[name]})
        await command(qmp, f"blockdev-add {name}", "blockdev-add",
                      {"driver": "qcow2", "node-name": f"s-{name}", "file": f"s-{name}-file", "backing": backing})
    await command(qmp, "block-stream unknown device", "block-stream", {"job-id": "s9", "device": "nothing"})
    await command(qmp, "block-stream base-node not below", "block-stream", {"job-id": "s9", "device": "s-top", "base-node": "s-top-file"})
    await command(qmp, "block-stream base and base-node", "block-stream",
                  {"job-id": "s9", "device": "s-top", "base": paths["base"], "base-node": "s-base"})
    await command(qmp, "block-stream without job-id", "block-stream", {"device": "s-top", "base-node": "s-base"})
    await command(qmp, "block-stream", "block-stream", {"job-id": "s0", "device": "s-top", "base-node": "s-base"})
    completed = {}
    seen = await job_events(qmp, "s0", until_status="null", completed=completed)
    record("block-stream statuses and events", "ok", seen=seen, completed=completed_shape(completed),
           whole=bool(completed and completed["len"] == completed["offset"]))
    nodes = {n["node-name"]: n for n in await qmp.execute("query-named-block-nodes", {})}
    top = nodes.get("s-top", {})
    record("stream result in the graph", "ok", backing=os.path.basename(top.get("backing_file", "")), depth=top.get("backing_file_depth"))
    await command(qmp, "query-block-jobs after the stream", "query-block-jobs", {}, jobs=[])
    for name in ("top", "mid", "base"):
        await command(qmp, f"blockdev-del stream {name}", "blockdev-del", {"node-name": f"s-{name}"})
        await command(qmp, f"blockdev-del stream {name} file", "blockdev-del", {"node-name": f"s-{name}-file"})
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", paths["top"]], capture_output=True, text=True).stdout)
    mapped = json.loads(subprocess.run(["qemu-img", "map", "--output=json", paths["top"]], capture_output=True, text=True).stdout)
    read = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0x11 0 64k", "-c", "read -P 0x33 1M 4k",
                           "-c", "read -P 0x22 1028k 60k", "-c", "read -P 0x44 2M 4k", "-c", "read -P 0x55 4M 128k", paths["top"]],
                          capture_output=True, text=True)
    check = subprocess.run(["qemu-img", "check", paths["top"]], capture_output=True, text=True)
    record("streamed image", "ok", backing=os.path.basename(info.get("backing-filename", "")), format=info.get("backing-filename-format"),
           map=[(m["start"], m["length"], m["depth"], m["data"]) for m in mapped],
           reads="ok" if read.returncode == 0 and "fail" not in read.stdout else read.stdout + read.stderr,
           check=check.returncode)


async def main():
    raw_exchange()
    image = os.path.join(WORKDIR, "disk.raw")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", image, "64M"], check=True)
    nbd_socket = os.path.join(WORKDIR, "nbd.sock")

    qmp = QMPClient("scenarios")
    await qmp.connect(SOCKET)
    await command(qmp, "blockdev-add file", "blockdev-add", {"driver": "file", "node-name": "proto", "filename": image})
    await command(qmp, "blockdev-add raw", "blockdev-add", {"driver": "raw", "node-name": "fmt", "file": "proto"})
    await command(qmp, "blockdev-add duplicate name", "blockdev-add", {"driver": "null-co", "node-name": "fmt"})
    await command(qmp, "blockdev-add unknown driver", "blockdev-add", {"driver": "no-such-driver", "node-name": "x1"})
    await command(qmp, "blockdev-add without node-name", "blockdev-add", {"driver": "null-co"})
    await command(qmp, "blockdev-add bad option", "blockdev-add", {"driver": "null-co", "node-name": "x2", "bogus": 1})
    await command(qmp, "blockdev-add null-co", "blockdev-add", {"driver": "null-co", "node-name": "nul", "size": 1048576})

    nodes = await qmp.execute("query-named-block-nodes", {})
    seen = sorted((n["node-name"], n["drv"], n["ro"], n["file"] == image or n["file"].startswith("null-co://")) for n in nodes)
    record("query-named-block-nodes", "ok", nodes=seen)

    await command(qmp, "block-export-add before nbd-server-start", "block-export-add",
                  {"type": "nbd", "id": "e0", "node-name": "fmt", "writable": True})
    await command(qmp, "nbd-server-start", "nbd-server-start", {"addr": {"type": "unix", "data": {"path": nbd_socket}}})
    await command(qmp, "nbd-server-start twice", "nbd-server-start", {"addr": {"type": "unix", "data": {"path": nbd_socket + "2"}}})
    await command(qmp, "block-export-add", "block-export-add", {"type": "nbd", "id": "e0", "node-name": "fmt", "writable": True})
    await command(qmp, "block-export-add same id", "block-export-add", {"type": "nbd", "id": "e0", "node-name": "nul"})
    await command(qmp, "block-export-add unknown node", "block-export-add", {"type": "nbd", "id": "e1", "node-name": "missing"})
    exports = await qmp.execute("query-block-exports", {})
    record("query-block-exports", "ok", exports=sorted((e["type"], e["id"], e["node-name"], e["shutting-down"]) for e in exports))

    uri = "nbd+unix:///fmt?socket=" + nbd_socket
    write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", "-c", "write -P 0xa5 1M 4k", uri],
                           capture_output=True, text=True)
    read = subprocess.run(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 64k", "-c", "read -P 0xa5 1M 4k", uri],
                          capture_output=True, text=True)
    record("qemu-io over the export", "ok" if write.returncode == 0 and read.returncode == 0 else "failed",
           output=(write.stdout + write.stderr + read.stdout + read.stderr) if write.returncode or read.returncode else "")

    # Statistics: the shape QEMU gives (values differ: QEMU counts only at devices, Strata at
    # every node), key order included, since clients may read QMP text as QEMU writes it.
    def shape(entry):
        stats = {k: v for k, v in entry["stats"].items() if k != "idle_time_ns"}
        return {"keys": list(entry.keys()), "node-name": entry.get("node-name"), "stats-keys": list(stats.keys()),
                "driver-specific": list(entry.get("driver-specific", {}).keys()),
                "parent": shape(entry["parent"]) if "parent" in entry else None}
    stats = await qmp.execute("query-blockstats", {"query-nodes": True})
    record("query-blockstats query-nodes", "ok", nodes=sorted((shape(e) for e in stats), key=lambda e: e["node-name"]))
    stats = await command(qmp, "query-blockstats of devices", "query-blockstats", {})
    record("query-blockstats devices answer", "ok", stats=stats)
    await command(qmp, "query-blockstats bad argument", "query-blockstats", {"query-nodes": "yes"})

    await command(qmp, "blockdev-del of an exported node", "blockdev-del", {"node-name": "fmt"})
    await command(qmp, "blockdev-del of a node with a parent", "blockdev-del", {"node-name": "proto"})
    await command(qmp, "block-export-del", "block-export-del", {"id": "e0"})
    event = None
    async with asyncio.timeout(20):
        async for received in qmp.events:
            if received["event"] == "BLOCK_EXPORT_DELETED":
                event = received
                break
    record("BLOCK_EXPORT_DELETED", "ok" if event else "missing", data=event and event.get("data"),
           timestamp=bool(event and isinstance(event["timestamp"]["seconds"], int)
                          and isinstance(event["timestamp"]["microseconds"], int)))
    await command(qmp, "block-export-del again", "block-export-del", {"id": "e0"})
    exports = await qmp.execute("query-block-exports", {})
    record("query-block-exports after removal", "ok", exports=exports)

    await command(qmp, "object-add throttle-group", "object-add",
                  {"qom-type": "throttle-group", "id": "tg0", "limits": {"iops-total": 1000}})
    await command(qmp, "object-add same id", "object-add", {"qom-type": "throttle-group", "id": "tg0"})
    limits = await command(qmp, "qom-get limits", "qom-get", {"path": "tg0", "property": "limits"})
    record("limits as added", "ok", limits=limits)
    await command(qmp, "qom-set limits", "qom-set", {"path": "/objects/tg0", "property": "limits", "value": {"iops-total": 2000}})
    limits = await command(qmp, "qom-get limits again", "qom-get", {"path": "tg0", "property": "limits"})
    record("limits as set", "ok", limits=limits)
    await command(qmp, "qom-set total with read", "qom-set", {"path": "tg0", "property": "limits", "value": {"iops-read": 5}})
    await command(qmp, "qom-get unknown path", "qom-get", {"path": "nothing", "property": "limits"})
    await command(qmp, "qom-get unknown property", "qom-get", {"path": "tg0", "property": "bogus"})
    blocks = await command(qmp, "query-block", "query-block", {})
    record("query-block answer", "ok", blocks=blocks)
    await command(qmp, "blockdev-add throttle over the group", "blockdev-add",
                  {"driver": "throttle", "node-name": "thr", "throttle-group": "tg0", "file": "fmt"})
    await command(qmp, "object-del of a group in use", "object-del", {"id": "tg0"})
    await command(qmp, "blockdev-del throttle", "blockdev-del", {"node-name": "thr"})
    await command(qmp, "object-del", "object-del", {"id": "tg0"})
    await command(qmp, "object-del unknown", "object-del", {"id": "tg0"})

    await command(qmp, "block_resize grows the file", "block_resize", {"node-name": "proto", "size": 128 << 20})
    record("file size after block_resize", "ok", size=os.stat(image).st_size)
    await command(qmp, "blockdev-del raw", "blockdev-del", {"node-name": "fmt"})
    await command(qmp, "blockdev-del file", "blockdev-del", {"node-name": "proto"})
    await command(qmp, "blockdev-del unknown", "blockdev-del", {"node-name": "proto"})
    # A qcow2 overlay added without `backing`: its backing chain opens by the names in the images.
    base, middle, top = (os.path.join(WORKDIR, f"{n}.qcow2") for n in ("base", "middle", "top"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "16M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 1M 64k", base], check=True,
                   capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", middle], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 4k", middle], check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", middle, "-F", "qcow2", top], check=True)
    await command(qmp, "blockdev-add overlay file", "blockdev-add", {"driver": "file", "node-name": "top-file", "filename": top})
    await command(qmp, "blockdev-add overlay without backing", "blockdev-add", {"driver": "qcow2", "node-name": "top", "file": "top-file"})
    nodes = await qmp.execute("query-named-block-nodes", {})
    mine = [n for n in nodes if n["node-name"] not in ("nul",)]
    implicit = [n for n in mine if n["node-name"].startswith("#")]
    top_info = next(n for n in mine if n["node-name"] == "top")
    record("implicit backing chain", "ok", drivers=sorted(n["drv"] for n in mine), implicit_read_only=all(n["ro"] for n in implicit),
           implicit_count=len(implicit), depth=top_info["backing_file_depth"],
           backing=os.path.basename(top_info.get("backing_file") or ""))
    await command(qmp, "export the overlay", "block-export-add", {"type": "nbd", "id": "e2", "node-name": "top"})
    uri = "nbd+unix:///top?socket=" + nbd_socket
    read = subprocess.run(["qemu-io", "-f", "raw", "-r", "-c", "read -P 0x11 0 64k", "-c", "read -P 0x33 1M 4k",
                           "-c", "read -P 0x22 1028k 60k", "-c", "read -P 0 2M 64k", uri], capture_output=True, text=True)
    record("reads through the chain", "ok" if read.returncode == 0 and "verification failed" not in read.stdout else "failed",
           output=read.stdout + read.stderr if read.returncode else "")
    await command(qmp, "block-export-del e2", "block-export-del", {"id": "e2"})
    async with asyncio.timeout(20):
        async for received in qmp.events:
            if received["event"] == "BLOCK_EXPORT_DELETED":
                break
    await command(qmp, "blockdev-del of an implicit node", "blockdev-del", {"node-name": implicit[0]["node-name"]})
    await command(qmp, "blockdev-del overlay", "blockdev-del", {"node-name": "top"})
    await command(qmp, "blockdev-del overlay file", "blockdev-del", {"node-name": "top-file"})
    nodes = await qmp.execute("query-named-block-nodes", {})
    record("implicit nodes gone with their parent", "ok", nodes=sorted(n["node-name"] for n in nodes))
    await command(qmp, "blockdev-add overlay with backing null", "blockdev-add",
                  {"driver": "qcow2", "node-name": "alone", "backing": None,
                   "file": {"driver": "file", "filename": top}})
    nodes = await qmp.execute("query-named-block-nodes", {})
    record("backing null opens no chain", "ok", count=len(nodes))
    await command(qmp, "blockdev-del alone", "blockdev-del", {"node-name": "alone"})

    await jobs(qmp)

    await command(qmp, "nbd-server-stop", "nbd-server-stop", {})
    await command(qmp, "nbd-server-stop twice", "nbd-server-stop", {})
    nodes = await qmp.execute("query-named-block-nodes", {})
    record("nodes left", "ok", nodes=sorted(n["node-name"] for n in nodes))
    await command(qmp, "quit", "quit", {})
    try:
        await qmp.disconnect()
    except EOFError:
        pass  # the daemon is going away, as quit asked


try:
    asyncio.run(main())
finally:
    # Also when a step broke the script: the transcript so far says where.
    with open(OUTPUT, "w") as out:
        json.dump(transcript, out, indent=1)
