"""Retries with backoff and jitter, and the circuit breaker, on a clock the test moves."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossfade.batch.policy import NO_RETRY, CircuitBreaker, Retry, retry_for


@given(st.integers(1, 30), st.integers(0, 2**32))
def test_backoff_grows_exponentially_up_to_the_cap_with_full_jitter(tries, seed):
    retry = Retry(attempts=40, base=0.1, cap=3.0)
    delay = retry.delay(tries, random.Random(seed))
    assert 0.0 <= delay <= min(3.0, 0.1 * 2 ** (tries - 1))


def test_the_jitter_spreads_retries_that_fail_together():
    rng = random.Random(1)
    delays = {round(Retry(base=1.0, cap=60).delay(5, rng), 3) for _ in range(50)}
    assert len(delays) > 40


def test_the_most_specific_error_class_decides():
    policies = {OSError: Retry(attempts=2), ConnectionResetError: Retry(attempts=9)}
    assert retry_for(ConnectionResetError(), policies).attempts == 9
    assert retry_for(FileNotFoundError(), policies).attempts == 2
    assert retry_for(KeyError("x"), policies) is NO_RETRY


def test_a_retry_needs_at_least_one_attempt():
    with pytest.raises(ValueError, match="attempts >= 1"):
        Retry(attempts=0)


def test_the_breaker_opens_after_k_consecutive_failures_and_probes_after_its_cooldown():
    breaker = CircuitBreaker(threshold=3, cooldown=10.0, probes=2)
    for _ in range(2):
        breaker.failure(0.0)
    breaker.success()  # a success in between resets the count
    for _ in range(3):
        assert breaker.allow(1.0)
        breaker.failure(1.0)
    assert breaker.state == "open" and not breaker.allow(5.0) and breaker.wait(5.0) == 6.0
    assert breaker.allow(11.0)  # the probe
    assert not breaker.allow(11.0)  # only one at a time
    breaker.success()
    assert breaker.state == "closed" and breaker.allow(11.0)


def test_failed_probes_wait_twice_as_long_then_trip():
    breaker = CircuitBreaker(threshold=1, cooldown=1.0, probes=2)
    breaker.failure(0.0)
    assert breaker.allow(1.0)
    breaker.failure(1.0)
    assert breaker.state == "open" and not breaker.allow(2.5) and breaker.allow(3.0)
    breaker.failure(3.0)
    assert breaker.tripped and not breaker.allow(100.0)
