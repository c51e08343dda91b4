"""Reconcile two stores after dual writes: compare them item by item, and backfill the new one.

After an expand phase (every write goes to the old store and, in the new shape, to the new one) the two
should agree: every old item has its new counterpart, equal to what the transform makes of it. `reconcile`
counts what does not: items missing from the new store, items only there, items that differ, and items
stored twice under different keys (a dual write retried after a lost answer). `backfill` then writes the
transform of every missing or differing item into the new store, which is also how the new store catches up
after a rollback sent writes to the old one only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from crossfade.batch.stores import ItemStore

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """How two stores compare, item by item. Immutable; the key lists are sorted."""

    source_items: int
    target_items: int
    matching: int
    missing: tuple[str, ...]
    extra: tuple[str, ...]
    differing: tuple[str, ...]
    duplicates: tuple[tuple[str, tuple[str, ...]], ...]
    errors: tuple[tuple[str, str], ...] = ()

    @property
    def consistent(self) -> bool:
        """True when the new store is exactly what the transform makes of the old one."""
        return not (self.missing or self.extra or self.differing or self.duplicates or self.errors)

    def to_dict(self) -> dict[str, object]:
        """A JSON-able form (counts, and the keys behind them)."""
        return {
            "source_items": self.source_items, "target_items": self.target_items, "matching": self.matching,
            "missing": list(self.missing), "extra": list(self.extra), "differing": list(self.differing),
            "duplicates": {identity: list(keys) for identity, keys in self.duplicates},
            "errors": dict(self.errors), "consistent": self.consistent,
        }


def reconcile(
    source: ItemStore,
    target: ItemStore,
    *,
    transform: Callable[[str, bytes], bytes] | None = None,
    key: Callable[[str], str] = lambda k: k,
    identity: Callable[[str, bytes], str | None] | None = None,
) -> Reconciliation:
    """Compare `target` with what `transform` (default: nothing) makes of each `source` item.

    `key` maps a source key to the target's key for it. `identity` names what an item is about (a message
    id inside it): two target items with the same identity are duplicates.
    """
    source_keys = list(source.keys())
    target_keys = list(target.keys())
    wanted = {key(k): k for k in source_keys}
    missing: list[str] = []
    differing: list[str] = []
    errors: list[tuple[str, str]] = []
    matching = 0
    for chunk in _chunks(source_keys):
        old = source.read(chunk)
        new = target.read([key(k) for k in chunk])
        for k in chunk:
            if k not in old:
                continue
            got = new.get(key(k))
            if got is None:
                missing.append(k)
                continue
            try:
                expected = old[k] if transform is None else _bytes(transform(k, old[k]))
            except Exception as e:  # noqa: BLE001 - the user's transform; its failure is reported per item
                errors.append((k, f"{type(e).__name__}: {e}"))
                continue
            if got == expected:
                matching += 1
            else:
                differing.append(k)
    extra = sorted(k for k in target_keys if k not in wanted)
    duplicates: list[tuple[str, tuple[str, ...]]] = []
    if identity is not None:
        owners: dict[str, list[str]] = {}
        for chunk in _chunks(target_keys):
            for k, data in target.read(chunk).items():
                name = identity(k, data)
                if name is not None:
                    owners.setdefault(name, []).append(k)
        # The copy at the key the source item maps to comes first: it is the one a backfill keeps.
        duplicates = sorted((name, tuple(sorted(keys, key=lambda k: (k not in wanted, k))))
                            for name, keys in owners.items() if len(keys) > 1)
    return Reconciliation(len(source_keys), len(target_keys), matching, tuple(sorted(missing)), tuple(extra),
                          tuple(sorted(differing)), tuple(duplicates), tuple(sorted(errors)))


def backfill(
    source: ItemStore,
    target: ItemStore,
    keys: Iterable[str],
    *,
    transform: Callable[[str, bytes], bytes] | None = None,
    key: Callable[[str], str] = lambda k: k,
    drop_duplicates: Iterable[tuple[str, tuple[str, ...]]] = (),
) -> int:
    """Write what `transform` makes of each given source item into `target`; remove every duplicate but the
    first of each identity given (`reconcile` lists the copy at the expected key first). Returns the number
    of items written or removed."""
    changed = 0
    for chunk in _chunks(list(keys)):
        old = source.read(chunk)
        writes: dict[str, bytes | None] = {
            key(k): old[k] if transform is None else _bytes(transform(k, old[k])) for k in chunk if k in old
        }
        target.write(writes)
        changed += len(writes)
    extra = [k for _, dupes in drop_duplicates for k in dupes[1:]]
    if extra:
        target.write(dict.fromkeys(extra))
    return changed + len(extra)


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]
