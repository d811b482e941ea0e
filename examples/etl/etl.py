"""A tiny ETL in plain Python, run by Sluice's `exec` job kind.

Each step reads its window from argv (or SLUICE_WINDOW_START/END) and writes files under
.sluice/dev/data/<window start day>/ so the next step can read them:

    python3 examples/etl/etl.py extract 2024-03-01T00:00:00Z 2024-03-02T00:00:00Z
"""

import csv
import json
import os
import random
import sys
from datetime import datetime, timedelta
from pathlib import Path


def data_dir(start: str) -> Path:
    day = start[:10]
    path = Path(os.environ.get("ETL_DATA_DIR", ".sluice/dev/data")) / day
    path.mkdir(parents=True, exist_ok=True)
    return path


def extract(start: str, end: str) -> None:
    """Fake sensor readings, one per sensor per hour of the window."""
    begin = datetime.fromisoformat(start.replace("Z", "+00:00"))
    finish = datetime.fromisoformat(end.replace("Z", "+00:00"))
    rng = random.Random(start)
    rows = []
    at = begin
    while at < finish:
        for sensor in ("north", "south", "east", "west"):
            rows.append({"sensor": sensor, "at": at.isoformat(), "pm25": round(rng.uniform(2, 60), 1)})
        at += timedelta(hours=1)
    out = data_dir(start) / "raw.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["sensor", "at", "pm25"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"extracted {len(rows)} readings to {out}")


def clean(start: str, end: str) -> None:
    raw = data_dir(start) / "raw.csv"
    with raw.open() as f:
        rows = [row for row in csv.DictReader(f) if 0 <= float(row["pm25"]) < 500]
    out = data_dir(start) / "clean.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["sensor", "at", "pm25"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"kept {len(rows)} readings")


def aggregate(start: str, end: str) -> None:
    with (data_dir(start) / "clean.csv").open() as f:
        rows = list(csv.DictReader(f))
    by_sensor: dict[str, list[float]] = {}
    for row in rows:
        by_sensor.setdefault(row["sensor"], []).append(float(row["pm25"]))
    summary = {sensor: round(sum(values) / len(values), 2) for sensor, values in sorted(by_sensor.items())}
    (data_dir(start) / "daily.json").write_text(json.dumps(summary, indent=2))
    print(f"daily means: {summary}")


def report(start: str, end: str) -> None:
    summary = json.loads((data_dir(start) / "daily.json").read_text())
    worst = max(summary, key=summary.get)
    print(f"air quality {start[:10]}: worst sensor {worst} at {summary[worst]} µg/m³ (run {os.environ.get('SLUICE_RUN_ID')})")


STEPS = {"extract": extract, "clean": clean, "aggregate": aggregate, "report": report}

if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in STEPS:
        print(f"usage: etl.py {{{'|'.join(STEPS)}}} START END", file=sys.stderr)
        sys.exit(2)
    STEPS[sys.argv[1]](sys.argv[2], sys.argv[3])
