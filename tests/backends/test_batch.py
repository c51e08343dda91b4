"""The snapshot ledger: content-addressed, deduplicated snapshots, item progress, and pruning."""

from __future__ import annotations

import pytest

from crossfade.backends.base import BackendError
from crossfade.backends.batch import BatchLedger, Outcome, digest
from crossfade.backends.sql import SQLBackend


@pytest.fixture
def ledger(backend_url):
    backend = SQLBackend(backend_url)
    yield BatchLedger(backend)
    backend.close()


def test_identical_contents_are_stored_once(ledger):
    outcomes = [Outcome(f"k{i}", "canary", "transformed", b"same old", f"new {i % 3}".encode(), 1)
                for i in range(30)]
    ledger.record("m", 1, outcomes, now=100.0)
    assert ledger.snapshot_stats() == {"snapshots": 4, "bytes": 8 + 3 * 5}
    items = ledger.items("m")
    assert items["k4"].before == digest(b"same old") and items["k4"].existed
    assert ledger.contents([items["k4"].after]) == {items["k4"].after: b"new 1"}


def test_items_move_through_their_statuses_and_a_later_attempt_replaces_a_row(ledger):
    ledger.record("m", 1, [Outcome("a", "s", "transformed", None, b"x", 1),
                           Outcome("b", "s", "failed", b"y", None, 4, "ConnectionError: reset")], now=1.0)
    ledger.mark("m", ["a"], "written", now=2.0)
    assert ledger.counts("m") == {"written": 1, "failed": 1}
    assert ledger.done("m", 1) == {"a", "b"} and ledger.done("m", 2) == set()
    assert not ledger.items("m")["a"].existed
    ledger.record("m", 2, [Outcome("b", "s", "transformed", b"y", b"z", 1)], now=3.0)
    assert ledger.items("m")["b"].attempt == 2 and ledger.counts("m", attempt=2) == {"transformed": 1}


def test_prune_forgets_old_items_and_the_snapshots_only_they_used(ledger):
    ledger.record("m", 1, [Outcome("old", "s", "written", b"shared", b"old-only", 1)], now=10.0)
    ledger.record("m", 1, [Outcome("new", "s", "written", b"shared", b"new-only", 1)], now=50.0)
    assert ledger.prune(30.0) == (1, 1)
    assert set(ledger.items("m")) == {"new"}
    assert ledger.snapshot_stats()["snapshots"] == 2


def test_a_control_plane_backend_is_refused():
    with pytest.raises(BackendError, match="batch migrations keep snapshots in a database"):
        BatchLedger(object())
