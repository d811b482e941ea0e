"""Jobs for the unit tests of `sluice-py run` and the job registry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sluice


class Ingest(sluice.Job):
    def perform(self, start: datetime, end: datetime, config: Any) -> Any:
        return {"start": start.isoformat(), "end": end.isoformat(), "config": config}


class WithContext(sluice.Job, name="with-context"):
    def perform(self, start: datetime, end: datetime, config: Any, ctx: sluice.Context) -> Any:
        ctx.logger.info("hello from %s", ctx.job)
        ctx.progress(1, 2, "files")
        assert sluice.current_context() is ctx
        return {"job": ctx.job, "attempt": ctx.attempt, "params": ctx.params}


@sluice.job(name="fail-permanently")
def fails(start: datetime, end: datetime, config: Any) -> Any:
    raise sluice.PermanentError("bad input")


@sluice.job
def not_json(start: datetime, end: datetime, config: Any) -> Any:
    return {"when": start}


imported_elsewhere = sluice.Context  # not a job: the registry skips it
