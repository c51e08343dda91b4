"""The memory store writes back into the caller's dict."""

from __future__ import annotations

import pytest

from crossfade.batch import as_store
from crossfade.batch.stores import open_store
from crossfade.registry import ProviderConfigError


def test_a_dict_is_updated_in_place():
    items = {"b": b"2", "a": b"1"}
    store = as_store(items)
    assert list(store.keys()) == ["a", "b"]
    store.write({"a": b"one", "b": None, "c": b"3"})
    assert items == {"a": b"one", "c": b"3"}


def test_configured_by_name_with_text_items():
    store = open_store({"memory": {"items": {"k": "é"}}})
    assert store.read(["k"]) == {"k": "é".encode()}
    with pytest.raises(ProviderConfigError, match="store.memory.path: unknown setting"):
        open_store({"memory": {"path": "x"}})
