"""Jobs as classes and functions, the registry, and `sluice-py run` (no NATS)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import sluice
from sluice.cli import main
from sluice.job import check_output, registry_of

HERE = Path(__file__).resolve().parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluice", "run", *args], capture_output=True, text=True, cwd=HERE, check=False
    )


def test_the_registry_names_jobs_by_name_or_dunder_name() -> None:
    import localjobs

    registry = registry_of(localjobs)
    assert sorted(registry) == ["Ingest", "fail-permanently", "not_json", "with-context"]


def test_run_one_job_locally_with_a_window_in_a_zone() -> None:
    done = run(
        "localjobs:Ingest",
        "--window",
        "2024-03-10",
        "--timezone",
        "America/Los_Angeles",
        "--config",
        '{"model": "v3"}',
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "start": "2024-03-10T00:00:00-08:00",
        "end": "2024-03-11T00:00:00-07:00",
        "config": {"model": "v3"},
    }


def test_a_job_with_ctx_gets_its_context_and_logs_to_stderr() -> None:
    done = run("localjobs:with-context", "--window", "yesterday", "--param", "region=eu")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"job": "with-context", "attempt": 1, "params": {"region": "eu"}}
    assert "INFO hello from with-context" in done.stderr and "progress 1/2 files" in done.stderr


def test_failures_and_bad_input_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "localjobs:fail-permanently", "--window", "2024-03-01"]) == 1
    assert "failed permanently: bad input" in capsys.readouterr().err
    assert main(["run", "localjobs:not_json", "--window", "2024-03-01"]) == 1
    assert "the output is not a JSON value" in capsys.readouterr().err
    assert main(["run", "localjobs:Ingest", "--window", "someday"]) == 2
    assert "invalid window `someday`" in capsys.readouterr().err
    assert main(["run", "localjobs:Ingest", "--window", "2024-03-01", "--config", "{nope"]) == 2
    assert "--config is not JSON" in capsys.readouterr().err
    assert main(["run", "localjobs:Missing", "--window", "2024-03-01"]) == 2
    assert "has no job `Missing`" in capsys.readouterr().err
    assert main(["run", "no_such_module_x:Job", "--window", "2024-03-01"]) == 2
    assert "cannot import module `no_such_module_x`" in capsys.readouterr().err
    assert main(["run", "localjobs:Ingest", "--window", "2024-03-01", "--timezone", "Mars/Base"]) == 2
    assert "unknown time zone `Mars/Base`" in capsys.readouterr().err


def test_bad_job_names_and_outputs_are_refused() -> None:
    with pytest.raises(sluice.ConfigError, match="job name `has space`"):
        sluice.job(name="has space")(lambda start, end, config: None)
    with pytest.raises(sluice.PermanentError, match="the limit is 65536"):
        check_output("x" * 70_000)


def test_current_context_outside_a_job_is_an_error() -> None:
    with pytest.raises(sluice.SluiceError, match="outside a running job"):
        sluice.current_context()


def test_spawn_and_fan_out_collect_children() -> None:
    import localjobs

    from sluice._wire import Window, parse_time

    window = Window(start=parse_time("2024-03-01T00:00:00Z"), end=parse_time("2024-03-02T00:00:00Z"))
    ctx = sluice.Context(run_id="r", workflow="w", job="parent", attempt=1, window=window)
    ctx.spawn("one", "exec", command=["true"])
    ctx.fan_out(localjobs.not_json, ["a", "b"])
    children = ctx.take_children()
    assert [(child.name, child.run) for child in children] == [
        ("one", "exec"),
        ("not_json-0", "not_json"),
        ("not_json-1", "not_json"),
    ]
    assert children[1].config == {"__sluice_call__": {"args": ["a"]}}
    with pytest.raises(sluice.SluiceError, match="not a JSON value"):
        ctx.fan_out(localjobs.not_json, [object()])


def test_the_console_script_and_the_wheel() -> None:
    script = Path(sys.executable).parent / "sluice-py"
    assert script.is_file(), f"{script} is missing: scripts/install-tools.sh installs the SDK"
    done = subprocess.run(
        [str(script), "run", "localjobs:Ingest", "--window", "2024-03-01"],
        capture_output=True,
        text=True,
        cwd=HERE,
        check=False,
    )
    assert done.returncode == 0 and json.loads(done.stdout)["start"] == "2024-03-01T00:00:00+00:00", (
        done.stderr
    )
    import zipfile

    wheels = sorted((HERE.parents[2] / ".tools" / "dist").glob("sluice_sdk-*.whl"))
    assert wheels, "scripts/install-tools.sh builds the wheel into .tools/dist"
    names = set(zipfile.ZipFile(wheels[-1]).namelist())
    assert {"sluice/py.typed", "sluice/_wire.py", "sluice/worker.py"} <= names
