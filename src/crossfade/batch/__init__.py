"""Batch migrations: move a set of keyed items (rows, files, records) through a migration's stages.

The same spec, stages, gates, triggers, approvals, events and audit log as a traffic migration, over items
instead of calls: a stage takes a share of the items by the sticky bucketing of their keys, each item's
previous content is snapshotted before it is written, and a rollback puts every touched item back exactly.
Nothing here is imported by `import crossfade`; `Client.batch` loads it when used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from crossfade.batch.policy import CircuitBreaker, Retry
from crossfade.batch.runner import BatchBusy, BatchReport, BatchRun, FailedItem, Progress, Transform, Validator
from crossfade.batch.stores import ItemStore, open_store
from crossfade.batch.stores.memory import MemoryStore

__all__ = [
    "BatchBusy", "BatchReport", "BatchRun", "CircuitBreaker", "FailedItem", "ItemStore", "MemoryStore", "Progress", "Retry",
    "Transform", "Validator", "as_store", "json_transform", "json_validator", "open_store",
]


def as_store(items: ItemStore | MutableMapping[str, bytes] | str) -> ItemStore:
    """An item store from a store, a dict of key -> bytes (written back in place), or a URL or directory."""
    if isinstance(items, str):
        return open_store(items)
    if isinstance(items, ItemStore):
        return items
    if isinstance(items, MutableMapping):
        return MemoryStore(items)
    raise TypeError(f"items must be an ItemStore, a dict of key -> bytes, a URL or a directory, not "
                    f"{type(items).__name__}")


def json_transform(fn: Callable[[Any], Any], *, indent: int | None = None) -> Transform:
    """A batch transform from a function of parsed JSON: decodes each item, calls `fn`, encodes the answer
    (keys in the order `fn` built them, non-ASCII text kept as is)."""

    def transform(key: str, data: bytes) -> bytes:
        return json.dumps(fn(json.loads(data)), ensure_ascii=False, indent=indent).encode()

    transform.__name__ = getattr(fn, "__name__", "json_transform")
    return transform


def json_validator(fn: Callable[[Any, Any], str | bool | None]) -> Validator:
    """A batch validator from a function of the parsed old and new JSON (None or True: fine; else the problem)."""

    def validate(key: str, before: bytes, after: bytes) -> str | bool | None:
        return fn(json.loads(before), json.loads(after))

    return validate


def describe(report: BatchReport) -> Mapping[str, Any]:
    """The report as JSON-able data (what `crossfade batch run --json` prints)."""
    return report.to_dict()
