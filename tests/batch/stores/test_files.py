"""The directory store: files by relative path, atomic replacement, removal, and no escaping the root."""

from __future__ import annotations

import pytest

from crossfade.batch import open_store
from crossfade.registry import ProviderConfigError


def test_files_are_items_by_relative_path(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.json").write_bytes(b"{}")
    (tmp_path / "y.json").write_bytes(b"[1]")
    (tmp_path / "notes.txt").write_text("skip")
    store = open_store(str(tmp_path), pattern="**/*.json")
    assert list(store.keys()) == ["a/x.json", "y.json"]
    assert store.read(["a/x.json", "gone.json"]) == {"a/x.json": b"{}"}
    store.write({"a/x.json": b'{"v": 2}', "b/new.json": b"1", "y.json": None})
    assert (tmp_path / "a" / "x.json").read_bytes() == b'{"v": 2}'
    assert (tmp_path / "b" / "new.json").read_bytes() == b"1" and not (tmp_path / "y.json").exists()
    assert sorted(p.name for p in tmp_path.rglob(".crossfade-*")) == []


def test_a_key_cannot_leave_the_directory(tmp_path):
    store = open_store(str(tmp_path))
    with pytest.raises(ValueError, match="leaves the directory"):
        store.write({"../outside": b"x"})


def test_a_missing_directory_is_reported(tmp_path):
    with pytest.raises(ProviderConfigError, match="store.root: must name an existing directory"):
        open_store(f"dir:{tmp_path / 'nope'}")
    with pytest.raises(ValueError, match="cannot open item store"):
        open_store(str(tmp_path / "nope"))
