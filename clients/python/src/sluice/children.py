"""`inputs[parent]["children"]`: a job's children with their results, read a page at a time.

A fan-out of 100,000 children should not cost the job that needs its parent 100,000 record
reads before it starts, nor hold them all: `Children` is a read-only sequence whose length
and names are read first (keys only), and whose records are read a page (CHILDREN_PAGE) at a
time as they are used, in natural name order (`sensor-10` after `sensor-9`). What it has read
is bounded to CHILDREN_INPUT_MAX_BYTES of JSON in all; beyond that the attempt fails with a
`PermanentError` naming the parent. Each child is `{"name", "state", "output"}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

from .errors import PermanentError

#: Children read at once, by one page of reads.
CHILDREN_PAGE = 500
#: The children's results a job may read, in all (bytes of JSON).
CHILDREN_INPUT_MAX_BYTES = 16 * 1024 * 1024

_DIGITS = re.compile(r"^(.*?)(\d+)$")


def natural(name: str) -> tuple[str, int]:
    """The sort key of a child's name: `sensor-10` after `sensor-9`."""
    match = _DIGITS.match(name)
    return (match.group(1), int(match.group(2))) if match else (name, -1)


class Children(Sequence[dict[str, Any]]):
    """The direct children of `parent`, in name order, read lazily a page at a time.

    `names()` gives the children's names (any order); `read(names)` their results, one dict
    per name in that order. Both are called from the job's thread."""

    def __init__(
        self,
        parent: str,
        names: Callable[[], list[str]],
        read: Callable[[list[str]], list[dict[str, Any]]],
        page: int = CHILDREN_PAGE,
        max_bytes: int = CHILDREN_INPUT_MAX_BYTES,
    ) -> None:
        self.parent = parent
        self._names_of = names
        self._read = read
        self._page = page
        self._max_bytes = max_bytes
        self._names: list[str] | None = None
        self._pages: dict[int, list[dict[str, Any]]] = {}
        self._bytes = 0

    @classmethod
    def loaded(
        cls, parent: str, children: list[dict[str, Any]], max_bytes: int = CHILDREN_INPUT_MAX_BYTES
    ) -> Children:
        """Children read beforehand (a `process`-mode job's child process has no connection):
        one page, held to the same bound at once."""
        by_name = {str(child["name"]): child for child in children}
        loaded = cls(
            parent,
            lambda: list(by_name),
            lambda names: [by_name[name] for name in names],
            page=len(by_name) or 1,
            max_bytes=max_bytes,
        )
        if by_name:
            loaded._page_of(0)
        return loaded

    def names(self) -> list[str]:
        """The children's names in order, without reading their results."""
        if self._names is None:
            self._names = sorted(self._names_of(), key=natural)
        return self._names

    def _page_of(self, number: int) -> list[dict[str, Any]]:
        found = self._pages.get(number)
        if found is None:
            names = self.names()[number * self._page : (number + 1) * self._page]
            found = self._read(names)
            self._bytes += sum(len(json.dumps(child, default=str)) for child in found)
            if self._bytes > self._max_bytes:
                raise PermanentError(
                    f"the children of `{self.parent}` give more than {self._max_bytes} bytes of results; "
                    "read fewer of them, or have the children store large results elsewhere"
                )
            self._pages[number] = found
        return found

    def __len__(self) -> int:
        return len(self.names())

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        count = len(self)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError(f"child {index} of {count}")
        return self._page_of(index // self._page)[index % self._page]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for number in range((len(self) + self._page - 1) // self._page):
            yield from self._page_of(number)

    def __repr__(self) -> str:
        return f"<children of {self.parent}: {len(self)}>"
