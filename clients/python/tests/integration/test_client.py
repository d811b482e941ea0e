"""`sluice.Client` against the real coordinator: the same meanings and refusals as the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stack import sluice_cli

import sluice
from sluice._wire import JobState, RunState

HELLO = """
name: sdk-hello
jobs:
  a: { run: noop }
  b: { run: exec, command: [echo, 'hi {{start}}'], needs: [a] }
"""


def test_submit_wait_status_runs_and_logs(client: sluice.Client, tmp_path: Path) -> None:
    path = tmp_path / "hello.yaml"
    path.write_text(HELLO)
    run_id = client.submit(path, window="2024-03-01")
    done = client.wait(run_id, timeout=60)
    assert done.state is RunState.SUCCEEDED
    assert {name: job.state for name, job in done.jobs.items()} == {
        "a": JobState.COMPLETED,
        "b": JobState.COMPLETED,
    }
    assert done.run.window.start.isoformat() == "2024-03-01T00:00:00+00:00"
    # The CLI sees the same run.
    shown = sluice_cli("status", run_id, "-o", "json")
    assert json.loads(shown.stdout)["state"] == "succeeded"
    assert client.status(run_id).run.id == run_id
    assert run_id in [run.id for run in client.runs(workflow="sdk-hello")]
    assert run_id in [run.id for run in client.runs(state="succeeded", limit=50)]
    lines = [entry.line.text for entry in client.logs(run_id)]
    assert "hi 2024-03-01T00:00:00Z" in lines


def test_yaml_text_params_and_a_window_in_the_workflows_zone(client: sluice.Client) -> None:
    text = (
        "name: sdk-zone\ntimezone: America/Los_Angeles\nparams: { who: nobody }\n"
        "jobs:\n  a: { run: exec, command: [echo, '{{params.who}}'] }\n"
    )
    run_id = client.submit(text, window="2024-03-10", params={"who": "alice"})
    done = client.wait(run_id, timeout=60)
    assert done.state is RunState.SUCCEEDED
    assert (done.run.window.end - done.run.window.start).total_seconds() == 23 * 3600
    assert [entry.line.text for entry in client.logs(run_id, job="a")] == ["alice"]


def test_an_idempotency_key_makes_one_run(client: sluice.Client) -> None:
    first = client.submit(HELLO, window="2024-03-02", idempotency_key="sdk-key-1")
    client.wait(first, timeout=60)
    assert client.submit(HELLO, window="2024-03-02", idempotency_key="sdk-key-1") == first


def test_a_rejected_submission_raises_its_reason(client: sluice.Client) -> None:
    with pytest.raises(sluice.Rejected, match="needs `ghost`, which is not a job"):
        client.submit("name: bad\njobs:\n  a: { run: noop, needs: [ghost] }\n")


def test_refusals_say_why_with_the_clis_kinds(client: sluice.Client) -> None:
    run_id = client.submit(HELLO, window="2024-03-03")
    client.wait(run_id, timeout=60)
    with pytest.raises(sluice.Refused) as finished:
        client.cancel(run_id)
    assert finished.value.kind == "conflict" and finished.value.exit_code == 1
    unknown = "01900000-0000-7000-8000-000000000000"
    with pytest.raises(sluice.Refused) as missing:
        client.cancel(unknown)
    assert missing.value.kind == "not_found" and missing.value.exit_code == 2
    with pytest.raises(sluice.NotFound):
        client.status(unknown)


def test_bad_input_is_named_before_anything_is_sent(client: sluice.Client) -> None:
    with pytest.raises(sluice.ConfigError, match="invalid window `someday`"):
        client.submit(HELLO, window="someday")
    with pytest.raises(sluice.ConfigError, match="idempotency_key must be 1 to 128 bytes"):
        client.submit(HELLO, idempotency_key="k" * 129)
