"""Integration fixtures (helpers in stack.py); skipped without a running Sluice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stack import HERE, SLUICE, URL, Workers

import sluice


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if URL and SLUICE:
        return
    skip = pytest.mark.skip(
        reason="needs SLUICE_TEST_NATS_URL and SLUICE_TEST_SLUICE (cli/tests/python_sdk.rs)"
    )
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def client() -> Iterator[sluice.Client]:
    with sluice.Client(URL) as opened:
        yield opened
