"""Fan-out in plain Python, run by Sluice's `exec` job kind.

    list START END          spawn one `calibrate` child per sensor (SLUICE_SPAWN_FILE)
    calibrate SENSOR START  calibrate one sensor; hand on its reading count (SLUICE_OUTPUT_FILE)
    report                  read what `list` handed on (SLUICE_INPUTS_FILE) and summarise
"""

import json
import os
import random
import sys

SENSORS = [f"sensor-{index:02d}" for index in range(24)]


def emit_output(value) -> None:
    with open(os.environ["SLUICE_OUTPUT_FILE"], "w", encoding="utf-8") as out:
        json.dump(value, out)


def list_sensors(start: str, end: str) -> None:
    with open(os.environ["SLUICE_SPAWN_FILE"], "w", encoding="utf-8") as out:
        for sensor in SENSORS:
            child = {
                "name": sensor,
                "run": "exec",
                "command": ["python3", "examples/etl/sensors.py", "calibrate", sensor, start],
                "retry": {"max_attempts": 3, "initial": "1s"},
            }
            out.write(json.dumps(child) + "\n")
    print(f"spawned {len(SENSORS)} calibrations for {start}..{end}")
    emit_output({"sensors": len(SENSORS)})


def calibrate(sensor: str, start: str) -> None:
    readings = random.Random(sensor + start).randint(20, 24)
    print(f"{sensor}: calibrated {readings} readings")
    emit_output({"readings": readings})


def report() -> None:
    with open(os.environ["SLUICE_INPUTS_FILE"], encoding="utf-8") as inputs:
        listed = json.load(inputs)["calibrate-all"]
    print(f"report: all {listed['sensors']} sensors calibrated")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"list": list_sensors, "calibrate": calibrate, "report": report}[command](*args)
