"""An item store over a dict in memory: for tests, notebooks and items built by the program itself."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from crossfade.registry import ConfigProblem, ProviderConfigError


class MemoryStore:
    """Items in a dict of key -> bytes that the caller may keep and read. Thread-safe."""

    def __init__(self, items: MutableMapping[str, bytes] | None = None) -> None:
        self.items: MutableMapping[str, bytes] = {} if items is None else items
        self._lock = threading.Lock()

    def keys(self) -> Iterator[str]:
        """Every key, sorted."""
        with self._lock:
            return iter(sorted(self.items))

    def read(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The content of the keys present."""
        with self._lock:
            return {k: self.items[k] for k in keys if k in self.items}

    def write(self, items: Mapping[str, bytes | None]) -> None:
        """Set or (for None) remove each item."""
        with self._lock:
            for key, data in items.items():
                if data is None:
                    self.items.pop(key, None)
                else:
                    self.items[key] = data


def create(config: dict[str, Any], path: str) -> MemoryStore:
    """A memory store; `items` (a mapping of key to text or bytes) fills it."""
    unknown = sorted(set(config) - {"items"})
    if unknown:
        raise ProviderConfigError([ConfigProblem(f"{path}.{k}", "unknown setting; the memory store takes: items")
                                   for k in unknown])
    items = config.get("items") or {}
    return MemoryStore({str(k): v.encode() if isinstance(v, str) else bytes(v) for k, v in items.items()})
