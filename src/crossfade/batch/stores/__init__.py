"""Item stores: where a batch migration reads its items and writes them back, one module per kind of store.

A store holds items by key as bytes (a row's value column, a file's content). The protocol is batch-shaped
so that a database store reads and writes hundreds of items per round trip. Stores are found by name
through the registry (`sql`, `files`, `memory`); `open_store` also takes a URL or a directory path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from crossfade.registry import Registry


@runtime_checkable
class ItemStore(Protocol):
    """Items by key, as bytes: list the keys, read some, write some (None deletes)."""

    def keys(self) -> Iterator[str]:
        """Every item's key, in a stable order."""

    def read(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The content of the given keys; a key with no item is absent from the answer."""

    def write(self, items: Mapping[str, bytes | None]) -> None:
        """Store each item's content, all or none; `None` removes the item (it did not exist before)."""


STORES: Registry[ItemStore] = Registry("item store", "crossfade.batch.stores")


def open_store(target: str | Mapping[str, Any], **options: Any) -> ItemStore:
    """The store a URL, a directory or a `{kind: {...}}` mapping names.

    `sqlite:///app.db` or `postgresql://...` (with `table=`, `key=`, `value=`) is a SQL table; an existing
    directory (or `dir:PATH`, with `pattern=`) is a directory of files.
    """
    if isinstance(target, Mapping):
        if len(target) != 1:
            raise ValueError(f"an item store is one {{kind: {{...}}}} mapping, got {dict(target)!r}")
        ((kind, config),) = target.items()
        return STORES.create(kind, config, f"store.{kind}")
    if target.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
        return STORES.create("sql", {"url": target, **options}, "store")
    root = target.removeprefix("dir:")
    if target.startswith("dir:") or Path(root).is_dir():
        return STORES.create("files", {"root": root, **options}, "store")
    raise ValueError(
        f"cannot open item store {target!r}: use sqlite:///app.db or postgresql://host/db (with a table), "
        "or an existing directory"
    )
