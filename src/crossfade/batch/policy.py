"""Retries with exponential backoff and full jitter per error class, and a circuit breaker. Pure: the time
and the random numbers are passed in."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Retry:
    """How often to try an item again after an error of one class, and how long to wait in between.

    `attempts` counts every try (1: never retried). The wait before try n+1 is uniform in
    [0, min(cap, base * 2**(n-1))] ("full jitter"), so many items failing together do not retry together.
    """

    attempts: int = 5
    base: float = 0.05
    cap: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base < 0 or self.cap < 0:
            raise ValueError(f"Retry needs attempts >= 1 and non-negative waits, got {self}")

    def delay(self, tries: int, rng: random.Random) -> float:
        """The wait after the `tries`-th failed try."""
        return rng.uniform(0.0, min(self.cap, self.base * 2 ** (tries - 1)))


NO_RETRY: Final = Retry(attempts=1)

# Errors that usually pass by themselves: a dropped connection, a timeout. Anything else is the transform's
# own mistake, and trying again would give the same answer.
DEFAULT_RETRIES: Final[Mapping[type[BaseException], Retry]] = {
    ConnectionError: Retry(), TimeoutError: Retry(),
}


def retry_for(error: BaseException, policies: Mapping[type[BaseException], Retry]) -> Retry:
    """The policy of the most specific class in `policies` that `error` is an instance of (none: no retry)."""
    for cls in type(error).__mro__:
        if cls in policies:
            return policies[cls]
    return NO_RETRY


CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"
TRIPPED: Final = "tripped"


class CircuitBreaker:
    """Stops trying after `threshold` consecutive failed tries, then lets one probe through after a cooldown.

    A probe that succeeds closes the breaker; one that fails opens it again for twice as long. After
    `probes` failed probes in a row the breaker trips for good and the run stops, to be resumed by hand.
    """

    def __init__(self, threshold: int = 25, cooldown: float = 1.0, probes: int = 3) -> None:
        if threshold < 1 or cooldown < 0 or probes < 1:
            raise ValueError("CircuitBreaker needs threshold >= 1, cooldown >= 0 and probes >= 1")
        self.threshold = threshold
        self.cooldown = cooldown
        self.probes = probes
        self.state = CLOSED
        self.consecutive = 0
        self.failed_probes = 0
        self.opened_at = 0.0
        self.opened = 0

    def allow(self, now: float) -> bool:
        """Whether a try may start now; in the open state, True once per cooldown (the probe)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and now - self.opened_at >= self.cooldown * 2 ** self.failed_probes:
            self.state = HALF_OPEN
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds until a probe may go (0 when closed)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown * 2 ** self.failed_probes - now)

    def success(self) -> None:
        """A try succeeded."""
        self.consecutive = 0
        if self.state == HALF_OPEN:
            self.state = CLOSED
            self.failed_probes = 0

    def failure(self, now: float) -> None:
        """A try failed."""
        self.consecutive += 1
        if self.state == HALF_OPEN:
            self.failed_probes += 1
            self.state = TRIPPED if self.failed_probes >= self.probes else OPEN
            self.opened_at = now
        elif self.state == CLOSED and self.consecutive >= self.threshold:
            self.state = OPEN
            self.opened_at = now
            self.opened += 1

    @property
    def tripped(self) -> bool:
        """True once the probes have failed: the run must stop."""
        return self.state == TRIPPED
