"""Jobs the integration tests run on Python workers (imported by `sluice-py worker sdkjobs`)."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import sluice


class Extract(sluice.Job, name="py-extract"):
    def perform(self, start: datetime, end: datetime, config: Any, ctx: sluice.Context) -> Any:
        ctx.logger.info("extracting %s..%s", start.isoformat(), end.isoformat())
        return {"rows": int(config["rows"]), "day": start.date().isoformat(), "traced": bool(ctx.traceparent)}


@sluice.job(name="py-transform")
def transform(start: datetime, end: datetime, config: Any, ctx: sluice.Context) -> Any:
    assert sluice.current_context() is ctx
    return {"rows": ctx.inputs["extract"]["rows"] * 2, "from": sorted(ctx.inputs)}


@sluice.job(name="py-flaky")
def flaky(start: datetime, end: datetime, config: Any, ctx: sluice.Context) -> Any:
    if ctx.attempt < int(config["succeed_on"]):
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return {"attempt": ctx.attempt}


@sluice.job(name="py-permanent")
def permanent(start: datetime, end: datetime, config: Any) -> Any:
    raise sluice.PermanentError("the input is malformed; retrying will not help")


def _note(config: Any, name: str, text: str) -> None:
    Path(config["dir"], name).write_text(text)


@sluice.job(name="py-hang")
def hang(start: datetime, end: datetime, config: Any, ctx: sluice.Context) -> Any:
    """Ignores cancellation: only a kill stops it (process isolation)."""
    _note(config, f"{ctx.job}.pid", str(os.getpid()))
    time.sleep(float(config.get("seconds", 60)))
    return None


@sluice.job(name="py-cooperative")
def cooperative(start: datetime, end: datetime, config: Any, ctx: sluice.Context) -> Any:
    """Stops when told (thread isolation)."""
    _note(config, f"{ctx.job}.started", "")
    deadline = time.monotonic() + float(config.get("seconds", 60))
    while time.monotonic() < deadline:
        if ctx.wait_cancelled(0.05):
            _note(config, f"{ctx.job}.noticed", str(ctx.cancelled))
            return None
    return {"finished": True}


@sluice.job(name="py-slow")
def slow(start: datetime, end: datetime, config: Any, ctx: sluice.Context) -> Any:
    _note(config, f"{ctx.job}.{ctx.attempt}.started", str(os.getpid()))
    time.sleep(float(config.get("seconds", 3)))
    return {"attempt": ctx.attempt}


@sluice.job(name="py-square")
def square(item: int) -> Any:
    """A fan-out child: called with one item. Item 7 fails its first attempt."""
    if item == 7 and sluice.current_context().attempt == 1:
        raise RuntimeError("item 7 fails once")
    return {"square": item * item}


@sluice.job(name="py-fan")
def fan(start: datetime, end: datetime, config: Any, ctx: sluice.Context) -> Any:
    ctx.fan_out(square, range(int(config["count"])), retry={"initial": "100ms", "jitter": False})
    return {"spawned": int(config["count"])}


@sluice.job(name="py-join")
def join(start: datetime, end: datetime, config: Any, ctx: sluice.Context) -> Any:
    children = ctx.inputs["fan"]["children"]
    return {
        "children": len(children),
        "sum": sum(child["output"]["square"] for child in children),
        "parent": ctx.inputs["fan"]["output"],
    }


@sluice.job(name="py-brittle")
def brittle(item: int) -> Any:
    """A fan-out child: item 3 fails for good."""
    if item == 3:
        raise sluice.PermanentError("item 3 is broken")
    return {"square": item * item}


@sluice.job(name="py-fan-brittle")
def fan_brittle(start: datetime, end: datetime, config: Any, ctx: sluice.Context) -> Any:
    ctx.fan_out(brittle, range(int(config["count"])))
    return None


@sluice.job(name="py-join-states")
def join_states(start: datetime, end: datetime, config: Any, ctx: sluice.Context) -> Any:
    states: dict[str, int] = {}
    for child in ctx.inputs["fan"]["children"]:
        states[child["state"]] = states.get(child["state"], 0) + 1
    return states
