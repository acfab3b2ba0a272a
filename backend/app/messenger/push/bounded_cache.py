"""A dictionary that keeps at most its newest `size` entries (least recently used go)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a bounded cache holds at least one entry")
        self._size = size
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get_or_make(self, key: K, make: Callable[[K], V]) -> V:
        """The entry for `key`, made (and kept) when missing; what `make` raises is
        passed on and nothing is kept."""
        try:
            value = self._entries[key]
        except KeyError:
            value = self._entries[key] = make(key)
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
            return value
        self._entries.move_to_end(key)
        return value

    def __len__(self) -> int:
        return len(self._entries)
