"""Tokens: high-entropy secrets stored only as hashes, with names and roles, on both SQL databases."""

from __future__ import annotations

import pytest

from crossfade.backends import ConflictError
from crossfade.backends.sql import SQLBackend
from crossfade.tokens import PREFIX, ROLES, new_token, rank, token_hash


def test_tokens_are_prefixed_random_and_hashed():
    a, b = new_token(), new_token()
    assert a.startswith(PREFIX) and a != b and len(a) >= 40
    assert token_hash(a) == token_hash(a) != token_hash(b) and a not in token_hash(a)
    assert [rank(r) for r in ROLES] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown role"):
        rank("root")


def test_the_store_keeps_hashes_finds_active_ones_and_revokes_by_name(backend_url):
    backend = SQLBackend(backend_url)
    secret = new_token()
    backend.create_token("alice", "operator", token_hash(secret), 100.0)
    found = backend.token_by_hash(token_hash(secret))
    assert (found.name, found.role, found.active) == ("alice", "operator", True)
    assert backend.token_by_hash(token_hash(new_token())) is None
    with pytest.raises(ConflictError, match="revoke it first"):
        backend.create_token("alice", "viewer", token_hash(new_token()), 101.0)
    assert backend.revoke_token("alice", 102.0) == 1
    assert backend.token_by_hash(token_hash(secret)) is None
    assert backend.revoke_token("alice", 103.0) == 0
    backend.create_token("alice", "viewer", token_hash(new_token()), 104.0)  # the name is free again
    assert [(t.name, t.role, t.revoked_at) for t in backend.tokens()] == [("alice", "operator", 102.0),
                                                                          ("alice", "viewer", None)]
    backend.close()
