"""The paged children reader: name order, pages read only as used, and the bound."""

from __future__ import annotations

from typing import Any

import pytest

from sluice import Children, PermanentError


def reader(count: int, page: int = 3, max_bytes: int = 1 << 20) -> tuple[Children, list[list[str]]]:
    reads: list[list[str]] = []
    names = [f"fan.item-{index}" for index in reversed(range(count))]

    def read(wanted: list[str]) -> list[dict[str, Any]]:
        reads.append(wanted)
        return [
            {"name": name, "state": "completed", "output": {"i": int(name.rsplit("-", 1)[1])}}
            for name in wanted
        ]

    return Children("fan", lambda: names, read, page=page, max_bytes=max_bytes), reads


def test_children_are_in_natural_name_order_and_pages_are_read_only_as_used() -> None:
    children, reads = reader(10)
    assert len(children) == 10 and reads == [], "the length needs the names alone"
    assert children[0]["name"] == "fan.item-0" and children[-1]["name"] == "fan.item-9"
    assert reads == [["fan.item-0", "fan.item-1", "fan.item-2"], ["fan.item-9"]]
    assert [child["output"]["i"] for child in children] == list(range(10))
    assert len(reads) == 4, "each page is read once"
    assert [child["name"] for child in children[2:5]] == ["fan.item-2", "fan.item-3", "fan.item-4"]
    with pytest.raises(IndexError):
        children[10]


def test_more_than_the_bound_fails_the_attempt_permanently_naming_the_parent() -> None:
    children, _ = reader(10, page=2, max_bytes=200)
    with pytest.raises(PermanentError, match="the children of `fan` give more than 200 bytes"):
        list(children)


def test_children_read_beforehand_behave_the_same() -> None:
    loaded = Children.loaded(
        "fan", [{"name": f"fan.c-{i}", "state": "failed", "output": None} for i in (10, 2, 1)]
    )
    assert [child["name"] for child in loaded] == ["fan.c-1", "fan.c-2", "fan.c-10"]
    assert len(Children.loaded("fan", [])) == 0
    with pytest.raises(PermanentError, match="the children of `fan` give more than 10 bytes"):
        Children.loaded("fan", [{"name": "fan.c-1", "state": "completed", "output": "x" * 20}], max_bytes=10)
