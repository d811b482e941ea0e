"""An ETL written as Python jobs (docs/python.md): extract and transform run on a Python pool,
the load step is an exec job on a Rust worker, in one workflow (etl.yaml).

    sluice pool apply python
    PYTHONPATH=examples/python-jobs sluice-py worker --pool python etl_jobs
    sluice submit examples/python-jobs/etl.yaml --window 2024-03-01 --wait

    PYTHONPATH=examples/python-jobs sluice-py run etl_jobs:Extract --window 2024-03-01 --config '{"sensors": 3}'
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import sluice


def reading(sensor: int, start: datetime) -> float:
    """A deterministic stand-in for a sensor's reading of the day."""
    digest = hashlib.sha256(f"{sensor}:{start.date()}".encode()).digest()
    return round(digest[0] / 2.55, 1)


class Extract(sluice.Job):
    """Reads every sensor's value for the window."""

    def perform(self, start: datetime, end: datetime, config: Any, ctx: sluice.Context) -> Any:
        sensors = int(config.get("sensors", 10))
        ctx.logger.info("reading %d sensors for %s", sensors, start.date())
        return {"readings": {f"s{n}": reading(n, start) for n in range(sensors)}}


@sluice.job(name="transform")
def transform(start: datetime, end: datetime, config: Any, ctx: sluice.Context) -> Any:
    """Keeps the readings over the threshold and averages them."""
    readings: dict[str, float] = ctx.inputs["extract"]["readings"]
    high = {name: value for name, value in readings.items() if value >= float(config.get("threshold", 50))}
    mean = sum(readings.values()) / len(readings) if readings else 0.0
    return {"high": sorted(high), "mean": round(mean, 2)}
