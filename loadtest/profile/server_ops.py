#!/usr/bin/env python3
"""Measure nats-server CPU time per JetStream operation.

Each case runs against a fresh `nats-server -js` (file storage, temp store dir).
Server CPU = utime+stime of the server process from /proc/<pid>/stat, read just
before and just after the measured phase (setup and warm-up excluded).

Usage:
  .tools/venv/bin/python loadtest/profile/server_ops.py [--n 5000] [--out /tmp/server_ops.json]
"""
import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import nats
from nats.js.api import (AckPolicy, ConsumerConfig, KeyValueConfig,
                         RetentionPolicy, StorageType)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SERVER = os.path.join(HERE, "..", "..", ".tools", "venv", "bin", "nats-server")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PIPELINE = 256          # max outstanding publish acks (same for every publish case)
WARMUP = 300            # ops of the same kind run before the measured phase
PAYLOAD = b"x" * 128    # roughly a small job message


def server_cpu_seconds(pid):
    """utime+stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        # comm (field 2) may contain spaces, so split after the closing paren;
        # then field 3 (state) is index 0, utime (14) is index 11, stime (15) index 12.
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A throwaway nats-server with JetStream in a fresh store dir."""

    def __init__(self, binary):
        self.binary, self.proc, self.dir = binary, None, None

    async def __aenter__(self):
        self.dir = tempfile.mkdtemp(prefix="nats-prof-")
        self.port = free_port()
        with open(os.path.join(self.dir, "server.log"), "w") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.dir],
                stdout=log, stderr=log)
        _LIVE.add(self)
        # Wait until it accepts clients (JetStream is ready once the port is up).
        for _ in range(100):
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited early, see {self.dir}/server.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("nats-server did not start listening within 5s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        _LIVE.discard(self)

    async def __aexit__(self, *exc):
        self.stop()

    def cpu(self):
        return server_cpu_seconds(self.proc.pid)


_LIVE = set()  # servers to kill if we are interrupted


def _kill_all(*_):
    # On SIGTERM/SIGINT/SIGHUP: stop servers and leave at once (no traceback from inside the event loop).
    for s in list(_LIVE):
        s.stop()
    print("interrupted: servers stopped", file=sys.stderr)
    os._exit(130)


# ---------------------------------------------------------------- helpers

async def publish_all(js, items):
    """Publish (subject, headers) pairs with up to PIPELINE acks in flight.

    js.publish_async blocks on a semaphore sized PIPELINE, so this keeps the
    window full; gather at the end surfaces any error PubAck.
    """
    futs = [await js.publish_async(subj, PAYLOAD, headers=hdr) for subj, hdr in items]
    return await asyncio.gather(*futs)


async def wq_stream(js):
    await js.add_stream(name="WQ", subjects=["w.>"], retention=RetentionPolicy.WORK_QUEUE,
                        storage=StorageType.FILE)


async def wait_drained(js, stream):
    """Plain acks are fire-and-forget: wait until the server has applied them
    (work-queue messages vanish on ack) so their cost lands inside the phase."""
    for _ in range(500):
        if (await js.stream_info(stream)).state.messages == 0:
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("acks were not all processed")


# ---------------------------------------------------------------- cases
# Each case is: async setup(js, n) -> measured coroutine factory.
# Everything outside the returned coroutine is excluded from the measurement.

async def case_wq_publish(js, n, dedup=False):
    await wq_stream(js)
    hdr = (lambda tag: {"Nats-Msg-Id": tag}) if dedup else (lambda tag: None)
    await publish_all(js, [(f"w.warm.{i}", hdr(f"warm-{i}")) for i in range(WARMUP)])
    return lambda: publish_all(js, [(f"w.{i}", hdr(f"id-{i}")) for i in range(n)])


async def case_kv_put_new(js, n):
    await js.create_key_value(KeyValueConfig(bucket="B", history=1, storage=StorageType.FILE))
    # kv.put is a plain publish to $KV.<bucket>.<key>; publish_async keeps the
    # pipelining identical to the other publish cases.
    await publish_all(js, [(f"$KV.B.warm.{i}", None) for i in range(WARMUP)])
    return lambda: publish_all(js, [(f"$KV.B.k.{i}", None) for i in range(n)])


async def case_kv_update(js, n):
    await js.create_key_value(KeyValueConfig(bucket="B", history=1, storage=StorageType.FILE))
    keys = [f"warm.{i}" for i in range(WARMUP)] + [f"k.{i}" for i in range(n)]
    acks = await publish_all(js, [(f"$KV.B.{k}", None) for k in keys])
    rev = {k: a.seq for k, a in zip(keys, acks)}

    def updates(ks):  # revision-checked overwrite, like kv.update(key, val, last=rev)
        return [(f"$KV.B.{k}", {"Nats-Expected-Last-Subject-Sequence": str(rev[k])}) for k in ks]

    await publish_all(js, updates(keys[:WARMUP]))
    return lambda: publish_all(js, updates(keys[WARMUP:]))


async def case_consume(js, n, batch, double_ack=False):
    await wq_stream(js)
    await publish_all(js, [(f"w.{i}", None) for i in range(WARMUP + n)])
    sub = await js.pull_subscribe("w.>", durable="C", stream="WQ",
                                  config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))

    async def consume(count):
        left = count
        while left:
            msgs = await sub.fetch(min(batch, left), timeout=5)
            if double_ack:  # acks of one batch in flight together, each awaits the server reply
                await asyncio.gather(*(m.ack_sync(timeout=5) for m in msgs))
            else:
                for m in msgs:
                    await m.ack()
            left -= len(msgs)

    async def measured():
        await consume(n)
        await wait_drained(js, "WQ")

    await consume(WARMUP)
    await js._nc.flush()
    # Let the warm-up acks land before the "before" reading.
    for _ in range(500):
        if (await js.stream_info("WQ")).state.messages == n:
            break
        await asyncio.sleep(0.01)
    return measured


CASES = [
    ("1. WQ publish, distinct subjects", case_wq_publish, {}),
    ("2. WQ publish + Nats-Msg-Id (dedup)", case_wq_publish, {"dedup": True}),
    ("3. KV put, new keys", case_kv_put_new, {}),
    ("4. KV update (expected-last-subject-seq)", case_kv_update, {}),
    ("5. consume+ack, fetch batch 1", case_consume, {"batch": 1}),
    ("6. consume+ack, fetch batch 8", case_consume, {"batch": 8}),
    ("7. consume+ack, fetch batch 256", case_consume, {"batch": 256}),
    ("8. consume+double-ack, fetch batch 8", case_consume, {"batch": 8, "double_ack": True}),
]


async def run_case(binary, setup, kwargs, n):
    async with Server(binary) as srv:
        nc = await nats.connect(f"nats://127.0.0.1:{srv.port}")
        try:
            js = nc.jetstream(publish_async_max_pending=PIPELINE, timeout=10)
            measured = await setup(js, n, **kwargs)
            await nc.flush()
            cpu0, t0 = srv.cpu(), time.perf_counter()
            await measured()
            await nc.flush()  # round trip: server has processed everything we sent
            wall, cpu1 = time.perf_counter() - t0, srv.cpu()
        finally:
            await nc.close()
    return {"n": n, "server_cpu_s": round(cpu1 - cpu0, 4), "wall_s": round(wall, 4),
            "server_cpu_us_per_op": round((cpu1 - cpu0) / n * 1e6, 2),
            "wall_us_per_op": round(wall / n * 1e6, 2)}


async def idle_baseline(binary, secs=3.0):
    """Server CPU burned while idle with one connected client (background noise)."""
    async with Server(binary) as srv:
        nc = await nats.connect(f"nats://127.0.0.1:{srv.port}")
        await asyncio.sleep(0.5)
        cpu0 = srv.cpu()
        await asyncio.sleep(secs)
        cpu = srv.cpu() - cpu0
        await nc.close()
    return round(cpu / secs * 1e3, 2)  # ms CPU per second


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="operations per case")
    ap.add_argument("--out", default="/tmp/server_ops.json")
    ap.add_argument("--server", default=shutil.which("nats-server") or DEFAULT_SERVER)
    ap.add_argument("--only", help="comma-separated case numbers, e.g. 5,7")
    args = ap.parse_args()

    binary = os.path.abspath(args.server)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        sys.exit(f"error: nats-server not found/executable at {binary} (use --server PATH)")

    only = {int(x) for x in args.only.split(",")} if args.only else None
    results = {"n": args.n, "clk_tck": CLK_TCK, "pipeline": PIPELINE, "warmup": WARMUP,
               "payload_bytes": len(PAYLOAD), "server": binary, "cases": {}}
    results["idle_server_cpu_ms_per_s"] = await idle_baseline(binary)
    for i, (name, setup, kwargs) in enumerate(CASES, 1):
        if only and i not in only:
            continue
        r = await run_case(binary, setup, kwargs, args.n)
        results["cases"][name] = r
        print(f"{name}: {r}", file=sys.stderr, flush=True)

    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nN={args.n} per case, payload {len(PAYLOAD)} B, file storage, "
          f"CPU tick {1e3 / CLK_TCK:.0f} ms (=> ±{1e6 / CLK_TCK / args.n:.1f} µs/op resolution), "
          f"idle server {results['idle_server_cpu_ms_per_s']} ms CPU/s\n")
    print("| case | server CPU µs/op | client wall µs/op |")
    print("|---|---:|---:|")
    for name, r in results["cases"].items():
        print(f"| {name} | {r['server_cpu_us_per_op']:.1f} | {r['wall_us_per_op']:.1f} |")


if __name__ == "__main__":
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _kill_all)
    try:
        asyncio.run(main())
    finally:
        for s in list(_LIVE):  # never leave a server behind
            s.stop()
