"""`sluice-py` (also `python -m sluice`): `run` one job locally, or serve a pool as a `worker`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .context import Context, uuid7
from .errors import ConfigError, PermanentError, SluiceError
from .job import resolve
from .windows import parse_window, parse_zone

#: The longest `--config` accepted (bytes; a job definition's limit, proto JOB_DEFINITION_MAX_BYTES).
CONFIG_MAX_BYTES = 128 * 1024


def _params(pairs: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise ConfigError(f"--param `{pair[:80]}` is not NAME=VALUE")
        params[name] = value
    return params


def _config(text: str | None) -> Any:
    if text is None:
        return None
    if len(text.encode()) > CONFIG_MAX_BYTES:
        raise ConfigError(f"--config is {len(text.encode())} bytes; the limit is {CONFIG_MAX_BYTES}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--config is not JSON: {error}") from None


def run_local(args: argparse.Namespace) -> int:
    """Runs one attempt of one job in this process, without NATS; prints its output as JSON."""
    runnable = resolve(args.job)
    zone = parse_zone(args.timezone)
    window = parse_window(args.window, zone, datetime.now(UTC))
    inputs = _config(args.inputs) if args.inputs else {}
    if not isinstance(inputs, dict):
        raise ConfigError("--inputs must be a JSON object (job name → output)")

    def sink(stream: str, text: str) -> None:
        print(f"[{runnable.name}] {text}", file=sys.stderr, flush=True)

    ctx = Context(
        run_id=uuid7(),
        workflow="local",
        job=runnable.name,
        attempt=1,
        window=window,
        params=_params(args.param),
        inputs=inputs,
        config=_config(args.config),
        log_sink=sink,
    )
    try:
        output = runnable.run(ctx)
    except PermanentError as error:
        print(f"sluice-py: job {runnable.name} failed permanently: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        print(f"sluice-py: job {runnable.name} failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    for child in ctx.take_children():
        print(f"[{runnable.name}] would spawn child {child.name} (run: {child.run})", file=sys.stderr)
    print(json.dumps(output))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice-py", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one job locally, without NATS")
    run.add_argument("job", help="MODULE:JOB, e.g. myteam.jobs:Ingest")
    run.add_argument(
        "--window", required=True, help="a day, yesterday, today, last 7d, DAY..DAY or START..END"
    )
    run.add_argument("--timezone", default="UTC", help="IANA zone the window is computed in (default UTC)")
    run.add_argument("--config", help="the job's config, as JSON")
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a run parameter")
    run.add_argument("--inputs", help="outputs of the jobs it needs, as a JSON object")
    run.set_defaults(handler=run_local)

    from .worker import add_worker_arguments

    worker = commands.add_parser("worker", help="serve a pool: run the module's jobs as they are dispatched")
    add_worker_arguments(worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    sys.path.insert(0, os.getcwd())  # `sluice-py run myteam.jobs:X` from the project's directory
    args = _parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except SluiceError as error:
        print(f"sluice-py: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
