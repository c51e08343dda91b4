"""Who is calling, attacked: lock-outs of valid tokens, forged X-Forwarded-For, a flooded limiter table, and a
hung PostgreSQL that must not freeze the server."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import pytest

from crossfade.server.auth import Authenticator, AuthError
from crossfade.tokens import new_token, token_hash


def test_forwarded_for_is_not_believed_from_an_untrusted_peer(control_plane):
    """A local process posing as 203.0.113.9 would otherwise lock that remote host out."""
    for _ in range(10):
        assert control_plane.call("GET", "/v1/migrations", token="cf_wrong",
                                  headers={"X-Forwarded-For": "203.0.113.9"})[0] == 401
    # The failures were counted against the real peer (loopback), whatever the header claimed.
    status, body, _ = control_plane.call("GET", "/v1/migrations", token="cf_wrong",
                                         headers={"X-Forwarded-For": "198.51.100.7"})
    assert status == 429 and "127.0.0.1" in body["error"]


def test_a_valid_token_is_never_locked_out_by_others_mistakes(sqlite_url):
    from crossfade.backends.sql import SQLBackend

    backend = SQLBackend(sqlite_url)
    secret = new_token()
    backend.create_token("host", "sdk", token_hash(secret), time.time())
    auth = Authenticator(backend)
    for _ in range(50):
        with pytest.raises(AuthError) as refused:
            auth.check("Bearer cf_guess", "10.0.0.1", "sdk")
    assert refused.value.status == 429
    assert auth.check(f"Bearer {secret}", "10.0.0.1", "sdk").name == "host"  # first use, not cached
    backend.close()


def test_a_flooded_limiter_table_does_not_unlock_the_locked_out(sqlite_url):
    from crossfade.backends.sql import SQLBackend

    backend = SQLBackend(sqlite_url)
    auth = Authenticator(backend, max_entries=50)
    for _ in range(10):
        with pytest.raises(AuthError):
            auth.check("Bearer cf_guess", "10.0.0.1", "viewer")
    for i in range(500):  # many other addresses, one failure each
        with pytest.raises(AuthError):
            auth.check("Bearer cf_guess", f"10.1.{i // 250}.{i % 250}", "viewer")
    with pytest.raises(AuthError) as refused:
        auth.check("Bearer cf_guess", "10.0.0.1", "viewer")
    assert refused.value.status == 429
    backend.close()


def _get(url: str, token: str | None = None, headers: dict[str, str] | None = None, timeout: float = 30.0):
    request = urllib.request.Request(url, headers={**({"Authorization": f"Bearer {token}"} if token else {}),
                                                   **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.headers
    except urllib.error.HTTPError as e:
        return e.code, e.headers


def test_a_hung_postgresql_does_not_freeze_health_or_long_polls(postgres_url):
    """Tables locked by another session: token look-ups wait on the database, in threads, with a deadline;
    /healthz and long polls of known tokens keep answering meanwhile."""
    import psycopg

    from conftest import _libpq, start_control_plane

    # Short statement and lock timeouts so that the test waits seconds, not the default ten.
    url = postgres_url + "?options=-c%20lock_timeout%3D8000%20-c%20statement_timeout%3D8000"
    plane, stop = start_control_plane(url)
    fresh = new_token()
    plane.backend.create_token("fresh", "sdk", token_hash(fresh), time.time())
    try:
        status, headers = _get(plane.url + "/v1/routing", plane.tokens["sdk"])  # the sdk token is now cached
        assert status == 200
        etag = headers["ETag"]
        with psycopg.connect(_libpq(postgres_url)) as locker:
            locker.execute("LOCK TABLE crossfade_tokens, crossfade_states IN ACCESS EXCLUSIVE MODE")
            answers: list[int] = []
            blocked = threading.Thread(target=lambda: answers.append(_get(plane.url + "/v1/migrations", fresh)[0]))
            blocked.start()  # a look-up that waits on the lock
            with psycopg.connect(_libpq(postgres_url), autocommit=True) as watcher:
                deadline = time.monotonic() + 30
                while not watcher.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0]:
                    assert time.monotonic() < deadline, "the look-up never reached the database"
                    time.sleep(0.02)
            # Well within the 8 s the look-up may wait: a server whose loop it blocked would not answer these.
            assert _get(plane.url + "/healthz", timeout=3)[0] == 200
            status, _ = _get(plane.url + "/v1/routing?wait=1", plane.tokens["sdk"], {"If-None-Match": etag}, timeout=3)
            assert status == 304
            blocked.join(timeout=60)
            assert answers == [503]  # the store's timeout answered it; nothing waited for ever
            locker.rollback()
        status, _ = _get(plane.url + "/v1/migrations", fresh)
        assert status == 200
    finally:
        stop()
