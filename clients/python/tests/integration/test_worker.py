"""The Python worker against the real coordinator and a Rust worker: a mixed workflow,
retries, permanent errors, timeouts, cancellation, SIGKILL and SIGTERM."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from stack import Workers, declare_pool, wait_for

import sluice
from sluice._wire import JobState, RunState

#: A job that fails twice and then succeeds (`name` the workflow's).
FLAKY = """
name: {name}
jobs:
  flaky:
    run: py-flaky
    pool: py
    config: {{ succeed_on: 3 }}
    retry: {{ max_attempts: 5, initial: 100ms, jitter: false }}
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_mixed_rust_python_and_exec_workflow_succeeds(client: sluice.Client, workers: Workers) -> None:
    declare_pool("py")
    workers.start("py")
    workflow = """
name: sdk-mixed
jobs:
  first: { run: noop }
  extract: { run: py-extract, pool: py, needs: [first], config: { rows: 21 } }
  transform: { run: py-transform, pool: py, needs: [extract] }
  load: { run: exec, command: [echo, loaded], needs: [transform] }
"""
    run_id = client.submit(workflow, window="2024-03-01")
    done = client.wait(run_id, timeout=60)
    assert done.state is RunState.SUCCEEDED, done.jobs
    # The run's trace context reached the job (the coordinator puts it on every job message).
    assert done.jobs["extract"].output == {"rows": 21, "day": "2024-03-01", "traced": True}
    assert done.jobs["transform"].output == {"rows": 42, "from": ["extract"]}
    assert done.jobs["extract"].attempt_history[0].worker.startswith("pytest-")
    assert not done.jobs["first"].attempt_history[0].worker.startswith("pytest-")
    lines = [entry.line.text for entry in client.logs(run_id, job="extract")]
    assert lines == ["INFO extracting 2024-03-01T00:00:00+00:00..2024-03-02T00:00:00+00:00"]


def test_a_job_that_fails_twice_then_succeeds_shows_three_attempts(
    client: sluice.Client, workers: Workers
) -> None:
    declare_pool("py")
    workers.start("py")
    workflow = FLAKY.format(name="sdk-flaky")
    done = client.wait(client.submit(workflow, window="2024-03-01"), timeout=60)
    assert done.state is RunState.SUCCEEDED
    job = done.jobs["flaky"]
    assert [attempt.attempt for attempt in job.attempt_history] == [1, 2, 3]
    assert (
        job.attempt_history[0].error is not None
        and "attempt 1 fails on purpose" in job.attempt_history[0].error
    )
    assert job.output == {"attempt": 3}


class _Spans:
    """An OTLP/HTTP receiver on loopback: the spans POSTed to /v1/traces."""

    def __init__(self) -> None:
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans: list[dict[str, Any]] = []
        spans = self.spans

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            spans.append(
                                {
                                    "name": span.name,
                                    "trace": span.trace_id.hex(),
                                    "span": span.span_id.hex(),
                                    "parent": span.parent_span_id.hex(),
                                    "error": span.status.code == 2,
                                    "attributes": {
                                        kv.key: kv.value.string_value or kv.value.int_value
                                        for kv in span.attributes
                                    },
                                }
                            )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def test_each_attempt_is_a_span_under_the_job_span_exported_over_otlp(
    client: sluice.Client, workers: Workers
) -> None:
    receiver = _Spans()
    declare_pool("py")
    # The SDK's batch processor sends every 100 ms here (default 5 s).
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    workers.start("py", env=env)
    workflow = FLAKY.format(name="sdk-traced")
    done = client.wait(client.submit(workflow, window="2024-03-01"), timeout=60)
    assert done.state is RunState.SUCCEEDED
    wait_for(lambda: len(receiver.spans) >= 3, "three attempt spans")
    attempts = sorted(receiver.spans, key=lambda span: span["name"])
    assert [span["name"] for span in attempts] == [f"attempt {n} of flaky" for n in (1, 2, 3)]
    assert [span["attributes"]["sluice.outcome"] for span in attempts] == [
        "retrying",
        "retrying",
        "succeeded",
    ]
    assert [span["error"] for span in attempts] == [True, True, False]
    assert all(span["attributes"]["sluice.worker"].startswith("pytest-") for span in attempts)
    # One trace; every attempt under the job's span (the job message's traceparent), each
    # a span of its own.
    assert len({span["trace"] for span in attempts}) == 1
    assert len({span["parent"] for span in attempts}) == 1 and attempts[0]["parent"] != "0" * 16
    assert len({span["span"] for span in attempts}) == 3


def test_a_permanent_error_dead_letters_at_once(client: sluice.Client, workers: Workers) -> None:
    declare_pool("py")
    workers.start("py")
    workflow = """
name: sdk-permanent
jobs:
  bad: { run: py-permanent, pool: py, retry: { max_attempts: 5, initial: 100ms } }
"""
    run_id = client.submit(workflow, window="2024-03-01")
    done = client.wait(run_id, timeout=60)
    assert done.state is RunState.FAILED
    assert len(done.jobs["bad"].attempt_history) == 1
    letters = [
        entry
        for entry in client.dlq(workflow="sdk-permanent")
        if entry.letter and entry.letter.job.run_id == run_id
    ]
    assert len(letters) == 1 and "retrying will not help" in letters[0].reason


def test_a_timeout_kills_only_that_job(client: sluice.Client, workers: Workers, tmp_path: Path) -> None:
    declare_pool("pyproc")
    workers.start("pyproc", isolation="process")
    workflow = f"""
name: sdk-timeout
jobs:
  stuck:
    run: py-hang
    pool: pyproc
    timeout: 1s
    retry: {{ max_attempts: 1 }}
    config: {{ dir: "{tmp_path}" }}
  fine: {{ run: py-extract, pool: pyproc, config: {{ rows: 1 }} }}
"""
    done = client.wait(client.submit(workflow, window="2024-03-01"), timeout=60)
    assert done.state is RunState.FAILED
    assert done.jobs["fine"].state is JobState.COMPLETED
    assert done.jobs["stuck"].state is JobState.FAILED
    assert "timed out after 1s" in (done.jobs["stuck"].error or "")
    pid = int((tmp_path / "stuck.pid").read_text())
    wait_for(lambda: not alive(pid), "the timed-out job's process to be killed", timeout=10)


def test_cancel_kills_a_running_job_in_process_mode(
    client: sluice.Client, workers: Workers, tmp_path: Path
) -> None:
    declare_pool("pyproc")
    workers.start("pyproc", isolation="process")
    workflow = f"""
name: sdk-cancel-process
jobs:
  stuck: {{ run: py-hang, pool: pyproc, config: {{ dir: "{tmp_path}" }} }}
"""
    run_id = client.submit(workflow, window="2024-03-01")
    wait_for((tmp_path / "stuck.pid").exists, "the job to start")
    pid = int((tmp_path / "stuck.pid").read_text())
    client.cancel(run_id)
    assert client.wait(run_id, timeout=30).state is RunState.CANCELLED
    wait_for(lambda: not alive(pid), "the cancelled job's process to be killed", timeout=10)


def test_cancel_stops_a_cooperative_job_in_thread_mode(
    client: sluice.Client, workers: Workers, tmp_path: Path
) -> None:
    declare_pool("py")
    workers.start("py")
    workflow = f"""
name: sdk-cancel-thread
jobs:
  loop: {{ run: py-cooperative, pool: py, config: {{ dir: "{tmp_path}" }} }}
"""
    run_id = client.submit(workflow, window="2024-03-01")
    wait_for((tmp_path / "loop.started").exists, "the job to start")
    client.cancel(run_id)
    assert client.wait(run_id, timeout=30).state is RunState.CANCELLED
    wait_for((tmp_path / "loop.noticed").exists, "the job to see ctx.cancelled", timeout=10)
    assert (tmp_path / "loop.noticed").read_text() == "True"


def test_sigkill_of_the_worker_mid_job_redelivers_and_completes(
    client: sluice.Client, workers: Workers, tmp_path: Path
) -> None:
    declare_pool("pykill", "--ack-wait", "2s")
    first = workers.start("pykill")
    workflow = f"""
name: sdk-sigkill
jobs:
  slow: {{ run: py-slow, pool: pykill, config: {{ dir: "{tmp_path}", seconds: 2 }} }}
"""
    run_id = client.submit(workflow, window="2024-03-01")
    wait_for((tmp_path / "slow.1.started").exists, "the first attempt to start")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    second = workers.start("pykill")
    done = client.wait(run_id, timeout=60)
    assert done.state is RunState.SUCCEEDED
    slow = done.jobs["slow"]
    # The killed attempt is charged only if its start was stored before the kill (decision
    # 8): the job then ends on attempt 2, else on attempt 1 again. Either way the second
    # worker ran it to the end (each attempt notes the pid that ran it).
    assert slow.output == {"attempt": slow.attempts} and slow.attempts in (1, 2), slow
    last = tmp_path / f"slow.{slow.attempts}.started"
    assert last.read_text() == str(second.pid), "the second worker ran the last attempt"


def test_sigterm_drains_running_jobs_before_exiting(
    client: sluice.Client, workers: Workers, tmp_path: Path
) -> None:
    declare_pool("py")
    worker = workers.start("py")
    workflow = f"""
name: sdk-sigterm
jobs:
  slow: {{ run: py-slow, pool: py, config: {{ dir: "{tmp_path}", seconds: 1.5 }} }}
"""
    run_id = client.submit(workflow, window="2024-03-01")
    wait_for((tmp_path / "slow.1.started").exists, "the job to start")
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, workers.log(worker)
    assert time.monotonic() - started > 0.5, "the worker waited for its running job"
    done = client.wait(run_id, timeout=30)
    assert done.state is RunState.SUCCEEDED and done.jobs["slow"].attempts == 1


@pytest.mark.parametrize("module", ["no_such_module_anywhere"])
def test_a_worker_for_a_module_that_does_not_import_exits_2(module: str) -> None:
    import subprocess
    import sys

    from stack import URL

    done = subprocess.run(
        [sys.executable, "-m", "sluice", "worker", module, "--nats-url", URL, "--pool", "py"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and f"cannot import module `{module}`" in done.stderr


def test_fan_out_children_run_on_the_pool_and_their_results_reach_the_join(
    client: sluice.Client, workers: Workers
) -> None:
    declare_pool("py")
    workers.start("py", concurrency=4)
    count = 2000
    workflow = f"""
name: sdk-fanout
jobs:
  fan: {{ run: py-fan, pool: py, config: {{ count: {count} }} }}
  join: {{ run: py-join, pool: py, needs: [fan] }}
"""
    done = client.wait(client.submit(workflow, window="2024-03-01"), timeout=120)
    assert done.state is RunState.SUCCEEDED, {name: job.error for name, job in done.jobs.items() if job.error}
    assert done.jobs["fan"].children == count
    assert done.jobs["join"].output == {
        "children": count,
        "sum": sum(i * i for i in range(count)),
        "parent": {"spawned": count},
    }
    # The child that failed was retried alone.
    assert done.jobs["fan.py-square-7"].output == {"square": 49}
    assert done.jobs["fan.py-square-7"].attempts == 2
    assert {
        job.attempts
        for path, job in done.jobs.items()
        if path.startswith("fan.") and path != "fan.py-square-7"
    } == {1}


def test_with_max_child_failures_one_child_failing_for_good_does_not_fail_the_parent(
    client: sluice.Client, workers: Workers
) -> None:
    declare_pool("py")
    workers.start("py", concurrency=4)
    workflow = """
name: sdk-tolerant
jobs:
  fan: { run: py-fan-brittle, pool: py, max_child_failures: 1, config: { count: 20 } }
  join: { run: py-join-states, pool: py, needs: [fan] }
"""
    done = client.wait(client.submit(workflow, window="2024-03-01"), timeout=60)
    assert done.state is RunState.SUCCEEDED, {name: job.error for name, job in done.jobs.items() if job.error}
    assert done.jobs["fan"].state is JobState.COMPLETED
    assert done.jobs["fan.py-brittle-3"].state is JobState.FAILED
    assert done.jobs["fan.py-brittle-3"].attempts == 1, "a permanent error is not retried"
    assert done.jobs["join"].output == {"completed": 19, "failed": 1}
    letters = [entry.letter for entry in client.dlq() if entry.letter is not None]
    assert [letter.job.job for letter in letters if letter.job.run_id == done.run.id] == ["fan.py-brittle-3"]


def test_the_python_jobs_example_runs_beside_an_exec_job(client: sluice.Client, workers: Workers) -> None:
    from stack import REPO

    example = REPO / "examples" / "python-jobs"
    declare_pool("python")
    workers.start("python", module="etl_jobs", path=example)
    done = client.wait(client.submit(example / "etl.yaml", window="2024-03-31"), timeout=60)
    assert done.state is RunState.SUCCEEDED, {name: job.error for name, job in done.jobs.items()}
    # The window is the workflow's zone's day: 23 hours on the day Berlin springs forward.
    assert (done.run.window.end - done.run.window.start).total_seconds() == 23 * 3600
    assert len(done.jobs["extract"].output["readings"]) == 12
    assert set(done.jobs["transform"].output) == {"high", "mean"}
    assert any("loaded the window 2024-03-31T00:00:00+01:00" in e.line.text for e in client.logs(done.run.id))


def test_an_undecodable_job_is_dead_lettered_raw_and_the_worker_goes_on(
    client: sluice.Client, workers: Workers
) -> None:
    import asyncio

    import nats
    from stack import URL

    from sluice.context import uuid7

    declare_pool("py")
    workers.start("py")
    subject = f"sluice.jobs.py.{uuid7()}.garbled"

    async def publish() -> None:
        connection = await nats.connect(URL)
        await connection.jetstream().publish(subject, b"\xc1 not msgpack")
        await connection.close()

    asyncio.run(publish())

    def dead_lettered() -> bool:
        return any(
            entry.letter is None and "cannot be decoded" in entry.reason for entry in client.dlq(pool="py")
        )

    wait_for(dead_lettered, "the undecodable job in the dead-letter stream")
    # The worker goes on with the next job.
    done = client.wait(
        client.submit(
            "name: after\njobs:\n  a: { run: py-extract, pool: py, config: { rows: 1 } }\n",
            window="2024-03-01",
        ),
        timeout=60,
    )
    assert done.state is RunState.SUCCEEDED
