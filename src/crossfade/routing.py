"""Sticky bucketing: which arm serves a key, decided from an in-memory routing table without I/O."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import mmh3

if TYPE_CHECKING:
    from crossfade.events import State
    from crossfade.spec import Spec

BUCKETS: Final = 10_000
LEGACY: Final = "legacy"
CANDIDATE: Final = "candidate"

# Statuses under which the candidate may serve traffic; every other status routes all keys to legacy.
SERVING_STATUSES: Final = frozenset({"running", "awaiting_approval", "rolling_back", "completed"})


def bucket(salt: str, key: object) -> int:
    """The key's bucket in [0, 10000): murmur3_x86_32 of UTF-8 `"{salt}:{key}"`, seed 0, unsigned."""
    return mmh3.hash(f"{salt}:{key}", 0, False) % BUCKETS


def threshold(fraction: float) -> int:
    """Buckets below this number serve the candidate: `round(traffic_percent * 100)`."""
    return round(fraction * BUCKETS)


@dataclass(frozen=True, slots=True)
class Decision:
    """Which arm serves one call, and why. Immutable.

    ``shadow`` means: also run the other arm, off the request path, and compare (the candidate beside a
    legacy-served call, or legacy beside a candidate-served one in a ``shadow_legacy`` stage).
    """

    arm: str
    shadow: bool
    stage: str
    bucket: int
    reason: str

    @property
    def candidate(self) -> bool:
        """True when the candidate serves this call."""
        return self.arm == CANDIDATE


_hash = mmh3.hash
_random = random.random
_BELOW = "bucket below traffic threshold"
_ABOVE = "bucket above traffic threshold"


class Route:
    """One migration's entry in the routing table: decides keys without allocating where it can."""

    __slots__ = (
        "name", "salt", "status", "stage", "traffic", "shadow", "shadow_legacy", "noise", "dual_write", "version",
        "spec", "errors",
        "_threshold", "_special", "_allow", "_deny", "_fixed", "_cache", "_shadowed", "_on_allow", "_on_deny",
        "_failsafe",
    )

    def __init__(
        self,
        name: str,
        *,
        salt: str,
        status: str,
        stage: str,
        traffic: float,
        shadow: float = 0.0,
        shadow_legacy: float = 0.0,
        noise: float = 0.0,
        dual_write: bool = False,
        allow: frozenset[str] = frozenset(),
        deny: frozenset[str] = frozenset(),
        version: int = 0,
        spec: Spec | None = None,
    ) -> None:
        self.name = name
        self.salt = salt
        self.status = status
        self.stage = stage
        self.traffic = traffic
        self.shadow = shadow
        self.shadow_legacy = shadow_legacy
        self.noise = noise
        self.dual_write = dual_write
        self.version = version
        self.spec = spec
        self.errors = 0
        self._threshold = threshold(traffic)
        self._allow = allow
        self._deny = deny
        # A migration that may not serve the candidate answers every key with one shared Decision.
        self._fixed = None if status in SERVING_STATUSES else Decision(LEGACY, False, stage, -1, status)
        self._special = self._fixed is not None or bool(allow or deny)
        self._on_allow = Decision(CANDIDATE, False, stage, -1, "allow list")
        self._on_deny = Decision(LEGACY, False, stage, -1, "deny list")
        self._failsafe = Decision(LEGACY, False, stage, -1, "crossfade internal error")
        # Decisions are values of (bucket, shadow): slot b of one list or the other for a shadowed call.
        # They are made once and reused, so deciding allocates nothing but the hashed string.
        self._cache: list[Decision | None] = [None] * BUCKETS
        self._shadowed: list[Decision | None] = [None] * BUCKETS

    @classmethod
    def from_state(cls, state: State, spec: Spec) -> Route:
        """The route a migration's folded state and its applied spec call for."""
        return cls(
            state.name,
            salt=spec.salt,
            status=state.status,
            stage=state.stage or "",
            traffic=state.traffic,
            shadow=state.shadow,
            shadow_legacy=state.shadow_legacy,
            noise=state.noise,
            dual_write=state.dual_write,
            allow=frozenset(spec.allow),
            deny=frozenset(spec.deny),
            version=state.seq,
            spec=spec,
        )

    def decide(self, key: object, rand: float | None = None) -> Decision:
        """Route one key; never raises. `rand` in [0, 1) draws the shadow sample (`random()` if omitted)."""
        try:
            if self._special:
                return self._decide_special(key, rand)
            # BUCKETS, spelled as a constant: this line is the hot path of every routed call.
            b = _hash(f"{self.salt}:{key}", 0, False) % 10_000
            if b < self._threshold:
                # A candidate-served call shadows legacy only in a ramp-down stage; the draw is per call.
                if self.shadow_legacy and (_random() if rand is None else rand) < self.shadow_legacy:
                    return self._shadowed[b] or self._remember(b, True)
                return self._cache[b] or self._remember(b, False)
            # Legacy-served calls shadow the candidate; the draw is per call, not per key.
            if self.shadow and (_random() if rand is None else rand) < self.shadow:
                return self._shadowed[b] or self._remember(b, True)
            return self._cache[b] or self._remember(b, False)
        except Exception:  # an unprintable key, say: the caller still gets an answer
            self.errors += 1
            return self._failsafe

    def _decide_special(self, key: object, rand: float | None) -> Decision:
        fixed = self._fixed
        if fixed is not None:
            return fixed
        skey = key if type(key) is str else str(key)
        if skey in self._deny:
            return self._on_deny
        if skey in self._allow:
            return self._on_allow
        b = _hash(f"{self.salt}:{skey}", 0, False) % BUCKETS
        rate = self.shadow_legacy if b < self._threshold else self.shadow
        if rate and (_random() if rand is None else rand) < rate:
            return self._shadowed[b] or self._remember(b, True)
        return self._cache[b] or self._remember(b, False)

    def _remember(self, b: int, shadow: bool) -> Decision:
        if b < self._threshold:
            decision = Decision(CANDIDATE, shadow, self.stage, b, _BELOW)
        else:
            decision = Decision(LEGACY, shadow, self.stage, b, _ABOVE)
        (self._shadowed if shadow else self._cache)[b] = decision
        return decision


def legacy_decision(reason: str, stage: str = "") -> Decision:
    """A decision that sends the call to legacy for a reason of crossfade's own (unknown, stale, ...)."""
    return Decision(LEGACY, False, stage, -1, reason)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Every migration's route, as one immutable snapshot swapped in whole by the refresher."""

    routes: Mapping[str, Route]
    fetched_at: float = 0.0

    def get(self, name: str) -> Route | None:
        """The route of a migration, or None when the table does not know it."""
        return self.routes.get(name)

    def summary(self) -> dict[str, Any]:
        """A JSON-able view: per migration status, stage, traffic and version."""
        return {
            name: {"status": r.status, "stage": r.stage, "traffic": r.traffic, "version": r.version}
            for name, r in self.routes.items()
        }
