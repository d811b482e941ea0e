#!/usr/bin/env python3
"""Follow-up to server_ops.py: consume+ack server cost vs. work-queue backlog size.

Fills a WQ stream with --backlog messages, then measures server CPU for consuming
the first --consume of them (fetch batch --batch, plain or double ack).
Hypothesis: once the backlog spans >1 file block (4 MB for WQ streams), acks of
messages in a non-last block re-load that whole block from disk each time.
"""
import argparse, asyncio, os, subprocess, sys, time, glob
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nats
from nats.js.api import AckPolicy, ConsumerConfig
import server_ops as so


async def run(binary, backlog, consume_n, batch, double, perf=None, same=False, nofilter=False):
    async with so.Server(binary) as srv:
        nc = await nats.connect(f"nats://127.0.0.1:{srv.port}")
        js = nc.jetstream(publish_async_max_pending=so.PIPELINE, timeout=10)
        await so.wq_stream(js)
        await so.publish_all(js, [("w.x" if same else f"w.{i}", None) for i in range(backlog)])
        blks = len(glob.glob(srv.dir + "/**/*.blk", recursive=True))
        # Filter "w.>" (what pull_subscribe("w.>") creates) vs. no filter at all.
        await js.add_consumer("WQ", ConsumerConfig(durable_name="C", ack_policy=AckPolicy.EXPLICIT,
                                                   filter_subject=None if nofilter else "w.>"))
        sub = await js.pull_subscribe_bind("C", "WQ")

        async def consume(count):
            left = count
            while left:
                msgs = await sub.fetch(min(batch, left), timeout=5)
                if double:
                    await asyncio.gather(*(m.ack_sync(timeout=5) for m in msgs))
                else:
                    for m in msgs:
                        await m.ack()
                left -= len(msgs)
        await consume(so.WARMUP)
        await nc.flush(); await asyncio.sleep(0.2)
        if perf:  # optional: sample the server's stacks during the measured phase
            prof = subprocess.Popen(["perf", "record", "-g", "-F", "999", "-o", perf, "-p", str(srv.proc.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(0.5)
        c0, t0 = srv.cpu(), time.perf_counter()
        await consume(consume_n)
        await nc.flush()
        for _ in range(500):  # wait until the plain acks were applied
            if (await js.stream_info("WQ")).state.messages == backlog - so.WARMUP - consume_n:
                break
            await asyncio.sleep(0.01)
        c, w = srv.cpu() - c0, time.perf_counter() - t0
        if perf:
            prof.send_signal(2); prof.wait()
        await nc.close()
    print(f"| {backlog} | {blks} | {consume_n} | {batch} | {'double' if double else 'plain'} | {'same' if same else 'distinct'} | {'none' if nofilter else 'w.>'} | "
          f"{c / consume_n * 1e6:.1f} | {w / consume_n * 1e6:.1f} |", flush=True)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backlog", type=int, nargs="+", default=[10000, 20000, 30000, 50000])
    ap.add_argument("--consume", type=int, default=5000)
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--double", action="store_true")
    ap.add_argument("--same-subject", action="store_true", help="all msgs on w.x instead of w.<i>")
    ap.add_argument("--no-filter", action="store_true", help="consumer without filter subject")
    ap.add_argument("--perf", help="perf.data path (perf record the server; last run wins)")
    a = ap.parse_args()
    print("| backlog msgs | .blk files | consumed | batch | ack | subjects | filter | server µs/op | wall µs/op |")
    print("|---:|---:|---:|---:|---|---|---|---:|---:|")
    for b in a.batch:
        for bl in a.backlog:
            await run(os.path.abspath(so.DEFAULT_SERVER), bl, a.consume, b, a.double, a.perf, a.same_subject, a.no_filter)

asyncio.run(main())
