"""Sticky bucketing: the formula, its uniformity, its monotonic ramp and its stability across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import chisquare

from crossfade.routing import BUCKETS, CANDIDATE, LEGACY, Route, bucket, threshold


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """Reference MurmurHash3 x86 32-bit, written from the published algorithm, to check the formula."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    h = seed
    n = len(data) // 4 * 4
    for i in range(0, n, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    k = 0
    tail = data[n:]
    if len(tail) >= 3:
        k ^= tail[2] << 16
    if len(tail) >= 2:
        k ^= tail[1] << 8
    if tail:
        k ^= tail[0]
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        k = (k * c2) & mask
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h


def test_bucket_matches_the_formula_for_100k_keys():
    keys = [f"user-{i}" for i in range(60_000)] + list(range(30_000)) + [f"ключ-{i}-é" for i in range(10_000)]
    for key in keys:
        assert bucket("checkout-pricing", key) == murmur3_x86_32(f"checkout-pricing:{key}".encode()) % BUCKETS


def test_uuid_and_int_keys_are_stringified():
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert bucket("s", u) == bucket("s", "12345678-1234-5678-1234-567812345678")
    assert bucket("s", 42) == bucket("s", "42")


def test_buckets_are_uniform_over_100_bins():
    counts = [0] * 100
    for i in range(200_000):
        counts[bucket("uniformity", f"key-{i}") // 100] += 1
    assert chisquare(counts).pvalue > 0.001


def test_threshold_is_round_of_percent_times_100():
    assert threshold(0.0) == 0
    assert threshold(0.01) == 100
    assert threshold(0.025) == 250
    assert threshold(0.0001) == 1
    assert threshold(1.0) == BUCKETS


def _route(traffic: float, **kw) -> Route:
    return Route("m", salt="m", status="running", stage="s", traffic=traffic, **kw)


def test_candidate_iff_bucket_below_threshold():
    route = _route(0.25)
    for i in range(5_000):
        d = route.decide(f"k{i}")
        assert d.bucket == bucket("m", f"k{i}")
        assert (d.arm == CANDIDATE) == (d.bucket < 2500)


@given(st.lists(st.floats(min_value=0, max_value=1), min_size=2, max_size=6), st.lists(st.text(), min_size=1))
def test_raising_traffic_never_moves_an_enrolled_key_back(levels, keys):
    levels = sorted(levels)
    for key in keys:
        arms = [_route(level).decide(key).arm for level in levels]
        if CANDIDATE in arms:
            first = arms.index(CANDIDATE)
            assert all(a == CANDIDATE for a in arms[first:])


def test_allow_and_deny_lists_come_first_with_no_bucket():
    route = _route(0.0, allow=frozenset({"alpha"}), deny=frozenset({"7"}))
    assert (route.decide("alpha").arm, route.decide("alpha").bucket) == (CANDIDATE, -1)
    full = _route(1.0, deny=frozenset({"7"}))
    assert (full.decide(7).arm, full.decide(7).bucket, full.decide(7).reason) == (LEGACY, -1, "deny list")


def test_a_migration_that_is_not_serving_routes_everything_to_legacy():
    for status in ("draft", "paused", "rolled_back", "aborted"):
        route = Route("m", salt="m", status=status, stage="s", traffic=1.0, allow=frozenset({"a"}))
        decision = route.decide("a")
        assert (decision.arm, decision.bucket, decision.reason) == (LEGACY, -1, status)


def test_shadow_is_drawn_per_call_and_only_for_legacy_calls():
    route = _route(0.5, shadow=0.5)
    legacy_key = next(f"k{i}" for i in range(100) if bucket("m", f"k{i}") >= 5000)
    candidate_key = next(f"k{i}" for i in range(100) if bucket("m", f"k{i}") < 5000)
    assert route.decide(legacy_key, 0.1).shadow and not route.decide(legacy_key, 0.9).shadow
    assert not route.decide(candidate_key, 0.1).shadow


def test_shadow_legacy_marks_candidate_calls_only_and_the_allow_list_too():
    route = Route("m", salt="m", status="running", stage="s", traffic=0.5, shadow_legacy=0.5,
                  allow=frozenset({"vip"}))
    legacy_key = next(f"k{i}" for i in range(100) if bucket("m", f"k{i}") >= 5000)
    candidate_key = next(f"k{i}" for i in range(100) if bucket("m", f"k{i}") < 5000)
    shadowed = route.decide(candidate_key, 0.1)
    assert (shadowed.arm, shadowed.shadow) == (CANDIDATE, True)
    assert not route.decide(candidate_key, 0.9).shadow
    assert not route.decide(legacy_key, 0.1).shadow
    # The allow list serves the candidate by name, outside the ramp: nothing to compare it with.
    assert not route.decide("vip", 0.1).shadow
    plain = Route("m", salt="m", status="running", stage="s", traffic=0.5, shadow_legacy=0.5,
                  deny=frozenset({"x"}))
    assert plain.decide(candidate_key, 0.1).shadow and not plain.decide(legacy_key, 0.1).shadow


def test_decisions_are_reused_not_reallocated():
    route = _route(0.3)
    assert route.decide("same") is route.decide("same")


def test_buckets_are_the_same_across_processes_and_hash_seeds():
    keys = [f"user-{i}" for i in range(500)]
    here = [bucket("salt", k) for k in keys]
    code = "import sys; from crossfade.routing import bucket; print([bucket('salt', f'user-{i}') for i in range(500)])"
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert eval(result.stdout) == here
