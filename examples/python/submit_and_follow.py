"""Submit a Sluice workflow and follow its run, using only nats-py and msgpack.

    .tools/venv/bin/python examples/python/submit_and_follow.py examples/workflows/hello.yaml \
        --url nats://127.0.0.1:4222 [--window-start 2024-03-01T00:00:00Z --window-end 2024-03-02T00:00:00Z]

Exits 0 if the run succeeded, 1 if it failed or was rejected. The protocol is in
docs/protocol.md.
"""

import argparse
import asyncio
import os
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import msgpack
import nats
from nats.js.errors import KeyNotFoundError, NotFoundError

SCHEMA_VERSION = 2


def uuid7() -> str:
    """A UUIDv7: 48-bit Unix milliseconds, then random bits (Python 3.11 has no uuid7)."""
    ms = time.time_ns() // 1_000_000
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70  # version 7
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(raw)))


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workflow")
    parser.add_argument("--url", default=os.environ.get("SLUICE_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--window-start")
    parser.add_argument("--window-end")
    args = parser.parse_args()

    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start = args.window_start or rfc3339(today - timedelta(days=1))
    end = args.window_end or rfc3339(today)

    nc = await nats.connect(args.url)
    js = nc.jetstream()
    run_id = uuid7()
    with open(args.workflow, encoding="utf-8") as f:
        workflow_yaml = f.read()
    submission = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "workflow": workflow_yaml,  # the YAML text; the coordinator validates it
        "window": {"start": start, "end": end},
        "params": {},
        "submitted_at": rfc3339(datetime.now(timezone.utc)),
    }
    await js.publish("sluice.submit", msgpack.packb(submission), headers={"Nats-Msg-Id": run_id})
    print(f"submitted run {run_id}")

    runs = await js.key_value("sluice-runs")
    jobs = await js.key_value("sluice-jobs")
    seen: dict[str, tuple[str, int]] = {}
    while True:
        try:
            run = msgpack.unpackb((await runs.get(run_id)).value)
        except KeyNotFoundError:
            try:
                rejected = await js.get_last_msg("SLUICE_REJECTED", f"sluice.rejected.{run_id}")
                reason = msgpack.unpackb(rejected.data)["reason"]
                print(f"run {run_id} was rejected: {reason}")
                await nc.close()
                return 1
            except NotFoundError:
                await asyncio.sleep(0.25)  # not taken by a coordinator yet
                continue
        for index, name in enumerate(run["jobs"]):
            try:
                job = msgpack.unpackb((await jobs.get(f"{run_id}.{name}")).value)
            except KeyNotFoundError:
                # No record yet: the job is still in the state the run began with.
                job = {"state": first_state(run, index), "attempts": 0}
            state = (job["state"], job.get("attempts", 0))
            if seen.get(name) != state:
                seen[name] = state
                print(f"  {name:<20} {job['state']:<10} attempt {job.get('attempts', 0)}")
        if run["state"] != "running":
            print(f"run {run_id} {run['state']}")
            await nc.close()
            return 0 if run["state"] == "succeeded" else 1
        await asyncio.sleep(0.25)


def first_state(run: dict, index: int) -> str:
    """The state of workflow job `index` while it has no record (docs/protocol.md)."""
    bitmap = run.get("queued_at_start")
    if bitmap is None:
        return "blocked"  # a record from before queued_at_start: its record is on its way
    digit = int(bitmap[index // 4], 16) if index // 4 < len(bitmap) else 0
    return "queued" if digit >> (index % 4) & 1 else "blocked"


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
