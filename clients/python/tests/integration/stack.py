"""Integration helpers: a running Sluice (nats-server, `sluice coordinator`, a Rust worker on
pool `default`) given by `SLUICE_TEST_NATS_URL` and `SLUICE_TEST_SLUICE` (the binary), as
cli/tests/python_sdk.rs starts it; and Python workers the tests start and stop themselves.
Without those variables the integration tests are skipped (`make test` runs them through
the Rust test)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

URL = os.environ.get("SLUICE_TEST_NATS_URL", "")
SLUICE = os.environ.get("SLUICE_TEST_SLUICE", "")
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
#: Longest wait for anything the tests wait on (s).
WAIT_S = 60.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Polls `condition` until true, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def sluice_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SLUICE, "--nats-url", URL, *args], capture_output=True, text=True, timeout=WAIT_S, check=False
    )


def declare_pool(name: str, *extra: str) -> None:
    done = sluice_cli("pool", "apply", name, *extra)
    assert done.returncode == 0, done.stderr


class Workers:
    """Python workers started by a test, stopped (SIGTERM, then SIGKILL) at its end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(
        self,
        pool: str,
        isolation: str = "thread",
        concurrency: int = 2,
        module: str = "sdkjobs",
        path: Path = HERE,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        worker_id = f"pytest-{uuid.uuid4().hex[:8]}"
        log = self.tmp / f"{worker_id}.log"
        environment = {**os.environ, "PYTHONPATH": str(path), **(env or {})}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sluice",
                "worker",
                module,
                "--nats-url",
                URL,
                "--pool",
                pool,
                "--concurrency",
                str(concurrency),
                "--isolation",
                isolation,
                "--worker-id",
                worker_id,
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=environment,
        )
        self.started.append((process, log))

        def announced() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"worker exited with {process.returncode}: {log.read_text()}")
            listed = sluice_cli("workers", "-o", "json")
            return listed.returncode == 0 and any(
                worker["worker_id"] == worker_id for worker in json.loads(listed.stdout)["workers"]
            )

        wait_for(announced, f"worker {worker_id} to announce itself")
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        return next(log.read_text() for started, log in self.started if started is process)

    def stop_all(self) -> None:
        for process, _ in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, log in self.started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.returncode not in (0, -signal.SIGKILL):
                print(f"--- worker log {log}\n{log.read_text()}")
