"""The outbox's storage: upgrading a store that already has migrations starts their cursors at their last
event, so the history before notifications existed is not sent; what happens next is."""

from __future__ import annotations

import shutil

import crossfade
from crossfade.backends import sql
from crossfade.backends.sql import SQLBackend, current_revision, upgrade
from crossfade.loop import NotificationOutbox


def test_an_upgraded_store_tells_of_new_events_only(backend_url, tmp_path, monkeypatch, receiver):
    monkeypatch.setenv("HOOK_KEY", "k")
    before = tmp_path / "migrations"
    shutil.copytree(sql.SCRIPT_LOCATION, before, ignore=shutil.ignore_patterns("__pycache__", "0005_*", "0008_*", "0009_*", "0010_*"))
    shipped = sql.SCRIPT_LOCATION
    monkeypatch.setattr(sql, "SCRIPT_LOCATION", str(before))
    spec = {"name": "m", "stages": [{"traffic": "10%"}, {"traffic": "100%"}],
            "notify": [{"webhook": {"url": receiver.url, "secret_env": "HOOK_KEY"}}]}
    with crossfade.Client(backend_url, background=False) as cf:
        cf.apply(spec)
        cf.migration("m").start()
        cf.migration("m").rollback("before the outbox existed")
        assert current_revision(cf.backend().engine) == "0003_security"
    monkeypatch.setattr(sql, "SCRIPT_LOCATION", shipped)
    assert upgrade(backend_url)[1] == sql.head_revision()  # 0005_notify and the revisions after it
    backend = SQLBackend(backend_url)
    try:
        outbox = NotificationOutbox(backend)
        assert outbox.store.cursor("m") == (3, 1)
        assert outbox.enqueue(0.0) == 0
        with crossfade.Client(backend_url, background=False) as cf:
            cf.migration("m").restart()
        assert outbox.enqueue(0.0) == 1
        assert [d.kind for d in outbox.store.list("m")] == ["restarted"]
    finally:
        backend.close()
