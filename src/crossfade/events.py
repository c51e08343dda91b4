"""The event log: hash-chained events, the state that is their fold, and the transitions operators ask for."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from crossfade.canonical import canonical_json

if TYPE_CHECKING:
    from crossfade.spec import Spec

GENESIS: Final = "0" * 64

# Event types. The controller adds its own; a fold that meets a type it does not know keeps the chain
# position and leaves the state alone, so an older reader never breaks on a newer log.
APPLIED: Final = "applied"
STARTED: Final = "started"
PROMOTED: Final = "promoted"
PAUSED: Final = "paused"
RESUMED: Final = "resumed"
ROLLED_BACK: Final = "rolled_back"
VERDICT: Final = "verdict"
APPROVAL_REQUESTED: Final = "approval_requested"
APPROVED: Final = "approved"
STEPPED_BACK: Final = "stepped_back"
ROLLBACK_STARTED: Final = "rollback_started"
ROLLBACK_STEP: Final = "rollback_step"
ABORTED: Final = "aborted"
RESTARTED: Final = "restarted"
# A metric source could not be read (the stage holds) / answers again: the state keeps the error meanwhile.
SOURCE_FAILED: Final = "source_failed"
SOURCE_RECOVERED: Final = "source_recovered"
# A router made its data plane match the routing state and read it back (or could not).
ROUTER_SYNCED: Final = "router_synced"
ROUTER_FAILED: Final = "router_failed"
# The last stage's bake passed: the migration is completed.
BAKED: Final = "baked"

# Statuses.
DRAFT: Final = "draft"
RUNNING: Final = "running"
PAUSED_STATUS: Final = "paused"
ROLLED_BACK_STATUS: Final = "rolled_back"
COMPLETED: Final = "completed"
AWAITING_APPROVAL: Final = "awaiting_approval"
ROLLING_BACK: Final = "rolling_back"
ABORTED_STATUS: Final = "aborted"

# Statuses from which no traffic is on the candidate and nothing runs until an operator acts.
ENDED: Final = frozenset({DRAFT, ROLLED_BACK_STATUS, ABORTED_STATUS})


def _freeze(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(json.loads(canonical_json(dict(payload))))


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded change of a migration, linked to the one before it by hash. Immutable."""

    migration: str
    seq: int
    type: str
    time: float
    actor: str
    reason: str | None
    payload: Mapping[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def create(
        cls,
        migration: str,
        seq: int,
        type: str,
        *,
        time: float,
        actor: str,
        reason: str | None = None,
        payload: Mapping[str, Any] | None = None,
        prev_hash: str,
    ) -> Event:
        """Build the next event of a chain and seal it with its hash."""
        frozen = _freeze(payload or {})
        body = _body(migration, seq, type, time, actor, reason, frozen, prev_hash)
        return cls(migration, seq, type, time, actor, reason, frozen, prev_hash, _digest(body))

    def body(self) -> dict[str, Any]:
        """The fields the hash covers (everything but the hash itself)."""
        return _body(
            self.migration, self.seq, self.type, self.time, self.actor, self.reason, self.payload, self.prev_hash
        )

    def expected_hash(self) -> str:
        """The hash this event's fields call for; differs from `hash` when a row was edited."""
        return _digest(self.body())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, hash included."""
        return {**self.body(), "hash": self.hash}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """The event a `to_dict` form (or a stored row) describes, taken as stored: no re-hashing."""
        return cls(
            data["migration"],
            int(data["seq"]),
            data["type"],
            float(data["time"]),
            data["actor"],
            data.get("reason"),
            _freeze(data.get("payload") or {}),
            data["prev_hash"],
            data["hash"],
        )


def _body(
    migration: str, seq: int, type: str, time: float, actor: str, reason: str | None,
    payload: Mapping[str, Any], prev_hash: str,
) -> dict[str, Any]:
    return {
        "migration": migration, "seq": seq, "type": type, "time": time, "actor": actor,
        "reason": reason, "payload": dict(payload), "prev_hash": prev_hash,
    }


def _digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first event at which a log stops being the chain it claims to be."""

    seq: int
    problem: str

    def __str__(self) -> str:
        return f"event {self.seq}: {self.problem}"


def verify(events: Sequence[Event], *, head: tuple[int, str] | None = None) -> ChainBreak | None:
    """Check a migration's whole log; None when intact, else the first bad event and what is wrong.

    `head` is the (seq, hash) the state snapshot recorded for the last event: it is what catches a log
    whose newest events were deleted, which no chain can show by itself.
    """
    prev = GENESIS
    for expected_seq, event in enumerate(events, start=1):
        if event.seq != expected_seq:
            what = "missing" if event.seq > expected_seq else "out of order or duplicated"
            return ChainBreak(expected_seq, f"{what}: found event {event.seq} where event {expected_seq} belongs")
        if event.prev_hash != prev:
            return ChainBreak(event.seq, "does not link to the event before it (prev_hash differs)")
        if event.expected_hash() != event.hash:
            return ChainBreak(event.seq, f"content was altered: its fields no longer match its hash ({event.type})")
        prev = event.hash
    if head is not None:
        head_seq, head_hash = head
        last = events[-1].seq if events else 0
        if head_seq > last:
            return ChainBreak(last + 1, f"missing: the log ends at event {last} but the state records {head_seq}")
        if head_seq == last and head_seq and head_hash != prev:
            return ChainBreak(last, "differs from the hash the state recorded for it")
    return None


def verify_snapshot(events: Sequence[Event], snapshot: State | None) -> ChainBreak | None:
    """Check that the stored state snapshot (what routing reads) is the fold of the events; None when it is.

    The snapshot is written beside the events, not derived from them on every read: rewriting it alone would
    move traffic without an event, and only this comparison shows it.
    """
    if snapshot is None:
        return None if not events else ChainBreak(events[-1].seq, "the log has events but no state snapshot")
    folded = fold(snapshot.name, events).to_dict()
    stored = snapshot.to_dict()
    changed = sorted(k for k in folded if folded[k] != stored.get(k))
    if not changed:
        return None
    shown = ", ".join(f"{k} {stored.get(k)!r} (the events say {folded[k]!r})" for k in changed[:4])
    return ChainBreak(snapshot.seq, f"the state snapshot differs from the fold of the events: {shown}")


def verify_specs(events: Sequence[Event], stored_digest: Callable[[int], str | None]) -> ChainBreak | None:
    """Check that each spec version an `applied` event records is stored with the digest the event names
    (`stored_digest(version)`: the sha256 of the stored spec's canonical JSON, None when it is missing)."""
    for event in events:
        if event.type != APPLIED:
            continue
        version, digest = event.payload.get("version"), event.payload.get("digest")
        found = stored_digest(int(version)) if isinstance(version, int) else None
        if found is None:
            return ChainBreak(event.seq, f"spec version {version} that this event applied is missing from the store")
        if found != digest:
            return ChainBreak(event.seq, f"the stored spec version {version} was changed: its digest is "
                                         f"{found[:12]}, the event recorded {str(digest)[:12]}")
    return None


def spec_digest(spec: Mapping[str, Any]) -> str:
    """The digest of a stored spec's `to_dict` form, as `Spec.digest` computes it and `applied` events record."""
    return hashlib.sha256(canonical_json(dict(spec)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class State:
    """Where a migration stands: the fold of its events. Immutable; `apply` returns the next state."""

    name: str
    status: str = DRAFT
    seq: int = 0
    head: str = GENESIS
    spec_version: int = 0
    stage_index: int = -1
    stage: str | None = None
    traffic: float = 0.0
    shadow: float = 0.0
    shadow_legacy: float = 0.0
    noise: float = 0.0
    dual_write: bool = False
    attempt: int = 0
    stage_entered_at: float | None = None
    updated_at: float | None = None
    reason: str | None = None
    spec_digest: str | None = None
    salt: str | None = None
    verdicts: tuple[tuple[str, str], ...] = ()
    rollback_step_at: float | None = None
    source_error: str | None = None
    # Per router named by the spec: (router, "verified" | "not_implemented" | "failed", candidate share, detail).
    routers: tuple[tuple[str, str, float, str], ...] = ()
    # While the last stage bakes: legacy's cell (`Cell.to_dict`) measured in the stage before, to judge against.
    baseline: Mapping[str, Any] | None = None

    def apply(self, event: Event) -> State:
        """The state after one more event."""
        p = event.payload
        common = {"seq": event.seq, "head": event.hash, "updated_at": event.time, "reason": event.reason}
        kind = event.type
        if kind == APPLIED:
            stage = {}
            if "stage_index" in p:
                stage = {"stage_index": p["stage_index"], "stage": p["stage"]}
            return replace(
                self, spec_version=p["version"], spec_digest=p["digest"], salt=p["salt"], **stage, **common
            )
        if kind in (STARTED, PROMOTED, RESTARTED, STEPPED_BACK):
            return replace(
                self,
                status=COMPLETED if p.get("final") else RUNNING,
                verdicts=(),
                stage_index=p["stage_index"],
                stage=p["stage"],
                traffic=p["traffic"],
                shadow=p["shadow"],
                # Logs written before these settings existed fold to their defaults.
                shadow_legacy=p.get("shadow_legacy", 0.0),
                noise=p.get("noise", 0.0),
                dual_write=p.get("dual_write", False),
                attempt=p.get("attempt", self.attempt),
                stage_entered_at=event.time,
                baseline=p.get("baseline"),
                **common,
            )
        if kind == BAKED:
            return replace(self, status=COMPLETED, baseline=None, **common)
        if kind == PAUSED:
            return replace(self, status=PAUSED_STATUS, **common)
        if kind == RESUMED:
            return replace(self, status=RUNNING, **common)
        if kind == ROLLED_BACK:
            return replace(self, status=ROLLED_BACK_STATUS, traffic=0.0, shadow=0.0, shadow_legacy=0.0, noise=0.0,
                           dual_write=p.get("dual_write", False), **common)
        if kind in (SOURCE_FAILED, SOURCE_RECOVERED):
            error = (p.get("error") or event.reason or "unreadable") if kind == SOURCE_FAILED else None
            return replace(self, source_error=error, seq=event.seq, head=event.hash, updated_at=event.time)
        if kind == VERDICT:
            verdicts = tuple((g["gate"], g["verdict"]) for g in p["gates"])
            return replace(self, verdicts=verdicts, seq=event.seq, head=event.hash, updated_at=event.time)
        if kind == APPROVAL_REQUESTED:
            return replace(self, status=AWAITING_APPROVAL, **common)
        if kind == APPROVED:
            return replace(self, status=RUNNING, **common)
        if kind in (ROLLBACK_STARTED, ROLLBACK_STEP):
            return replace(self, status=ROLLING_BACK, traffic=p["traffic"], shadow=0.0, shadow_legacy=0.0, noise=0.0,
                           dual_write=p.get("dual_write", False), rollback_step_at=event.time, **common)
        if kind in (ROUTER_SYNCED, ROUTER_FAILED):
            status = p.get("verification", "verified") if kind == ROUTER_SYNCED else "failed"
            entry = (p["router"], status, float(p["candidate"]), event.reason or "")
            routers = tuple(r for r in self.routers if r[0] != p["router"]) + (entry,)
            return replace(self, routers=tuple(sorted(routers)), seq=event.seq, head=event.hash,
                           updated_at=event.time)
        if kind == ABORTED:
            return replace(self, status=ABORTED_STATUS, traffic=0.0, shadow=0.0, shadow_legacy=0.0, noise=0.0,
                           dual_write=p.get("dual_write", False), **common)
        return replace(self, seq=event.seq, head=event.hash, updated_at=event.time)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, as the state snapshot table stores it."""
        return {
            "name": self.name, "status": self.status, "seq": self.seq, "head": self.head,
            "spec_version": self.spec_version, "stage_index": self.stage_index, "stage": self.stage,
            "traffic": self.traffic, "shadow": self.shadow, "shadow_legacy": self.shadow_legacy,
            "noise": self.noise, "dual_write": self.dual_write, "attempt": self.attempt,
            "stage_entered_at": self.stage_entered_at, "updated_at": self.updated_at, "reason": self.reason,
            "spec_digest": self.spec_digest, "salt": self.salt,
            "verdicts": [list(pair) for pair in self.verdicts], "rollback_step_at": self.rollback_step_at,
            # Only while a metric source fails, so that the snapshots of every other state read as before.
            **({} if self.source_error is None else {"source_error": self.source_error}),
            **({"routers": [list(r) for r in self.routers]} if self.routers else {}),
            **({} if self.baseline is None else {"baseline": json.loads(json.dumps(dict(self.baseline)))}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> State:
        """The state a `to_dict` form describes."""
        return cls(**{**data, "verdicts": tuple(tuple(pair) for pair in data.get("verdicts") or ()),
                      "routers": tuple(tuple(r) for r in data.get("routers") or ())})

    def verdict(self, gate: str) -> str | None:
        """The last recorded verdict of a gate in this stage, or None."""
        return dict(self.verdicts).get(gate)


def dual_writes_stopped(events: Iterable[Event]) -> Event | None:
    """The rollback or abort that stopped dual writes, when the migration has not written both sides since:
    from then on the candidate's store (or, after a rollback from a candidate-authoritative stage, legacy's)
    misses every write. None when dual writes are on, were never on, or ended by a stage change."""
    state = State("")
    stopped = None
    for event in events:
        after = state.apply(event)
        if state.dual_write and not after.dual_write:
            stopped = event if event.type in (ROLLED_BACK, ROLLBACK_STARTED, ROLLBACK_STEP, ABORTED) else None
        elif after.dual_write:
            stopped = None
        state = after
    return stopped


def fold(name: str, events: Iterable[Event]) -> State:
    """A migration's state from its whole log."""
    state = State(name)
    for event in events:
        state = state.apply(event)
    return state


class TransitionError(ValueError):
    """An operator asked for a change the migration's state does not allow; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Change:
    """An event not yet sealed: what a transition decided, before it is numbered, hashed and stored."""

    type: str
    reason: str | None
    payload: Mapping[str, Any]


def seal(state: State, changes: Sequence[Change], *, actor: str, now: float) -> tuple[State, list[Event]]:
    """Number, hash and apply changes after `state`: the events to append and the state they lead to."""
    events = []
    for change in changes:
        event = Event.create(state.name, state.seq + 1, change.type, time=now, actor=actor, reason=change.reason,
                             payload=change.payload, prev_hash=state.head)
        state = state.apply(event)
        events.append(event)
    return state, events


def _enter(spec: Spec, index: int, **extra: Any) -> dict[str, Any]:
    stage = spec.stages[index]
    final = index == len(spec.stages) - 1
    if final and spec.bake:
        # The last stage is judged for `bake` seconds first; `baked` completes the migration.
        final = False
        extra["bake"] = spec.bake
    # Shadow settings are written only when set, so the events of a stage without them read as before.
    shadows = {name: getattr(stage, name) for name in ("shadow_legacy", "noise", "dual_write") if getattr(stage, name)}
    return {"stage_index": index, "stage": stage.name, "traffic": stage.traffic, "shadow": stage.shadow,
            **shadows, "final": final, **extra}


def apply_change(state: State | None, spec: Spec, version: int) -> Change | None:
    """Record a spec (new or changed); None when this exact spec is already the applied one.

    A running migration keeps its place by stage name; a spec that drops the current stage, or changes
    the salt (which would move keys between arms), is refused while traffic depends on it.
    """
    payload: dict[str, Any] = {"version": version, "digest": spec.digest(), "salt": spec.salt}
    if state is None or state.seq == 0:
        return Change(APPLIED, "spec applied", payload)
    if state.spec_digest == spec.digest():
        return None
    live = state.status not in ENDED and state.stage is not None
    if live:
        if spec.salt != state.salt:
            raise TransitionError(
                f"{state.name}: the salt cannot change while the migration is {state.status} "
                "(it would move keys between legacy and candidate); roll back first, or keep the salt"
            )
        names = [s.name for s in spec.stages]
        if state.stage not in names:
            raise TransitionError(
                f"{state.name}: the new spec has no stage {state.stage!r}, where the migration stands now; "
                f"keep that stage name (stages are: {', '.join(names)}) or roll back first"
            )
        index = names.index(state.stage)
        payload.update(stage_index=index, stage=state.stage)
    return Change(APPLIED, "spec changed", payload)


def start_change(state: State, spec: Spec, reason: str | None = None) -> Change:
    """Start a draft migration at its first stage."""
    if state.status != DRAFT:
        hint = "; `crossfade restart` begins a new attempt" if state.status in ENDED else ""
        raise TransitionError(f"{state.name} is already {state.status}; `start` applies to a draft migration{hint}")
    return Change(STARTED, reason or "started", _enter(spec, 0, attempt=state.attempt + 1))


def restart_change(state: State, spec: Spec, reason: str | None = None) -> Change:
    """Begin a new attempt at the first stage after a rollback or an abort; the salt, so every bucket, stays."""
    if state.status not in (ROLLED_BACK_STATUS, ABORTED_STATUS):
        raise TransitionError(
            f"cannot restart {state.name}: it is {state.status}; only a rolled-back or aborted migration restarts"
        )
    return Change(RESTARTED, reason or "restarted", _enter(spec, 0, attempt=state.attempt + 1))


@dataclass(frozen=True, slots=True)
class StageProgress:
    """How far the current stage is from being left: hold time still to run and calls per arm so far."""

    hold_left: float
    candidate_calls: int
    legacy_calls: int
    # Messages of the gates whose estimate is past their limit though they do not FAIL yet.
    past_limit: tuple[str, ...] = ()
    # Legacy's cell (`Cell.to_dict`) in this stage: what the last stage's bake is judged against.
    legacy: Mapping[str, Any] | None = None
    # What the bake's final look still waits for, per gate, once its time is up (`crossfade.changes`).
    final_look: tuple[str, ...] = ()

    def unmet(self, spec: Spec, state: State) -> list[str]:
        """What the stage still waits for before a promotion (its hold or bake, its `min_samples`, a gate whose
        estimate is past its limit); empty when none."""
        import math

        from crossfade.spec.units import format_duration

        stage = spec.stages[state.stage_index]
        waiting = [f"past its limit: {message}" for message in self.past_limit]
        if self.hold_left > 0:
            what = "bake" if baking(spec, state) else "hold"
            waiting.append(f"the {what} has {format_duration(math.ceil(self.hold_left))} left")
        if self.final_look:
            waiting.append("the bake's final look waits for calls (" + "; ".join(self.final_look) + ")")
        if baking(spec, state):
            return waiting  # the last stage has no legacy calls to count
        if min(self.candidate_calls, self.legacy_calls) < stage.min_samples:
            waiting.append(f"{self.candidate_calls} candidate and {self.legacy_calls} legacy calls of the "
                           f"{stage.min_samples} per arm needed")
        return waiting


def promote_change(state: State, spec: Spec, reason: str | None = None, *, force: bool = False,
                   progress: StageProgress | None = None, baseline: Mapping[str, Any] | None = None) -> Change:
    """Move to the next stage; entering the last stage completes the migration.

    Refused, unless `force` (which the event records with what it went past): a gate whose last verdict is
    FAIL; a next stage marked `approval: true` (that takes `approve`); and, given the stage's `progress`, a
    hold still running, fewer calls than `min_samples` or a gate whose estimate is past its limit. The
    controller, which checks those itself, passes no progress. In the last stage's bake, `promote` ends the
    bake and completes the migration (`bake_end_change`). `baseline` (or the progress's legacy cell) is what
    the last stage's bake is judged against.
    """
    if state.status != RUNNING:
        hint = {
            DRAFT: "run `crossfade start` first",
            PAUSED_STATUS: "run `crossfade resume` first",
            ROLLED_BACK_STATUS: "run `crossfade restart` to begin a new attempt",
            ABORTED_STATUS: "run `crossfade restart` to begin a new attempt",
            COMPLETED: "it is already at its last stage",
            AWAITING_APPROVAL: "the next stage needs an approval: run `crossfade approve`",
            ROLLING_BACK: "it is rolling back",
        }.get(state.status, "")
        raise TransitionError(f"cannot promote {state.name}: it is {state.status}" + (f"; {hint}" if hint else ""))
    if baking(spec, state):
        return bake_end_change(state, spec, reason, force=force, progress=progress)
    failing = [gate for gate, verdict in state.verdicts if verdict == "FAIL"]
    nxt = spec.stages[state.stage_index + 1]
    unmet = progress.unmet(spec, state) if progress is not None else []
    if not force:
        if failing:
            raise TransitionError(
                f"cannot promote {state.name}: gate {', '.join(failing)} FAILs in stage {state.stage}; "
                "promote --force goes past it (recorded as forced)"
            )
        if nxt.approval:
            raise TransitionError(
                f"cannot promote {state.name}: stage {nxt.name} needs an approval; run `crossfade approve "
                f"{state.name}` (or promote --force, recorded as forced)"
            )
        if unmet:
            raise TransitionError(
                f"cannot promote {state.name} yet (stage {state.stage}): " + "; ".join(unmet)
                + "; promote --force goes past it (recorded as forced)"
            )
    extra: dict[str, Any] = {"from_stage": state.stage}
    if force:
        extra["forced"] = True
        extra["failing_gates"] = failing
        if nxt.approval:
            extra["approval_bypassed"] = True
        if unmet:
            extra["unmet"] = unmet
    extra.update(_baseline(spec, state.stage_index + 1, baseline, progress))
    return Change(PROMOTED, reason or "promoted", _enter(spec, state.stage_index + 1, **extra))


def baking(spec: Spec, state: State) -> bool:
    """True while the migration runs in its last stage and that stage is still being judged (`bake`)."""
    return bool(spec.bake) and state.status in (RUNNING, AWAITING_APPROVAL) and state.stage is not None \
        and state.stage_index == len(spec.stages) - 1


def _baseline(spec: Spec, index: int, baseline: Mapping[str, Any] | None, progress: StageProgress | None
              ) -> dict[str, Any]:
    """The `baseline` of an entry into the last stage with a bake: legacy's cell of the stage left."""
    if not spec.bake or index != len(spec.stages) - 1:
        return {}
    found = baseline if baseline is not None else (progress.legacy if progress is not None else None)
    return {} if found is None else {"baseline": dict(found)}


def bake_end_change(state: State, spec: Spec, reason: str | None = None, *, force: bool = False,
                    progress: StageProgress | None = None) -> Change:
    """Complete a migration whose last stage baked: by the controller once the bake passed, or by an operator's
    `promote` (refused, unless `force`, while a gate FAILs, the bake has time left or an estimate is past its
    limit, given `progress`)."""
    failing = [gate for gate, verdict in state.verdicts if verdict == "FAIL"]
    unmet = progress.unmet(spec, state) if progress is not None else []
    if not force and (failing or unmet):
        why = [f"gate {', '.join(failing)} FAILs"] if failing else []
        raise TransitionError(f"cannot complete {state.name} (stage {state.stage} is baking): "
                              + "; ".join(why + unmet) + "; promote --force goes past it (recorded as forced)")
    payload: dict[str, Any] = {"stage": state.stage, "final": True}
    if force:
        payload.update(forced=True, failing_gates=failing, **({"unmet": unmet} if unmet else {}))
    return Change(BAKED, reason or "the bake passed", payload)


def request_approval_change(state: State, spec: Spec, reason: str | None = None) -> Change:
    """Ask a person to approve entering the next stage (the spec marks it `approval: true`)."""
    if state.status != RUNNING:
        raise TransitionError(f"cannot request approval for {state.name}: it is {state.status}")
    nxt = spec.stages[state.stage_index + 1]
    return Change(APPROVAL_REQUESTED, reason or f"stage {nxt.name} needs an approval",
                  {"stage": state.stage, "next_stage": nxt.name, "next_traffic": nxt.traffic})


def approve_changes(state: State, spec: Spec, reason: str | None = None, *, progress: StageProgress | None = None
                    ) -> list[Change]:
    """Approve the pending stage: the approval and the promotion, appended together.

    Only a migration awaiting approval is approved: the controller asks once the stage's hold, samples and
    gates allow it, so an approval never skips them.
    """
    if state.status != AWAITING_APPROVAL:
        raise TransitionError(f"nothing to approve for {state.name}: it is {state.status}, not awaiting approval")
    approved = Change(APPROVED, reason or "approved", {"stage": spec.stages[state.stage_index + 1].name})
    promoted = Change(PROMOTED, reason or "approved", _enter(spec, state.stage_index + 1, from_stage=state.stage,
                                                             approved=True,
                                                             **_baseline(spec, state.stage_index + 1, None, progress)))
    return [approved, promoted]


def pause_change(state: State, reason: str | None = None) -> Change:
    """Send every key to legacy and stop the clock, keeping the stage."""
    if state.status not in (RUNNING, AWAITING_APPROVAL):
        raise TransitionError(f"cannot pause {state.name}: it is {state.status}; only a running migration pauses")
    return Change(PAUSED, reason or "paused", {"stage": state.stage})


def resume_change(state: State, reason: str | None = None) -> Change:
    """Return a paused migration to its stage's traffic."""
    if state.status != PAUSED_STATUS:
        raise TransitionError(f"cannot resume {state.name}: it is {state.status}, not paused")
    return Change(RESUMED, reason or "resumed", {"stage": state.stage, "traffic": state.traffic})


def _kept_writes(state: State, spec: Spec | None) -> dict[str, Any]:
    """`dual_write: true` in a rollback's payload when the spec keeps dual writes on after one (and they are on)."""
    return {"dual_write": True} if spec is not None and spec.dual_write_after_rollback and state.dual_write else {}


def rollback_change(state: State, reason: str, spec: Spec | None = None) -> Change:
    """Send every key back to legacy at once; a reason is required because someone will ask why. With the
    spec's `dual_write_after_rollback`, dual writes stay on."""
    if not reason or not reason.strip():
        raise TransitionError("a rollback needs a reason (--reason TEXT): it goes into the audit log")
    if state.status in ENDED:
        raise TransitionError(f"cannot roll back {state.name}: it is {state.status}; no traffic is on the candidate")
    return Change(ROLLED_BACK, reason, {"from_stage": state.stage, "from_traffic": state.traffic,
                                        **_kept_writes(state, spec)})


def abort_change(state: State, reason: str, spec: Spec | None = None) -> Change:
    """Give the attempt up: every key to legacy, and nothing more happens until `restart`."""
    if not reason or not reason.strip():
        raise TransitionError("an abort needs a reason (--reason TEXT): it goes into the audit log")
    if state.status in ENDED:
        raise TransitionError(f"cannot abort {state.name}: it is {state.status}")
    return Change(ABORTED, reason, {"from_stage": state.stage, "from_traffic": state.traffic,
                                    **_kept_writes(state, spec)})


def step_back_change(state: State, spec: Spec, reason: str, *, to: float | None = None) -> Change:
    """Return to an earlier stage: the one before (the controller's `on_failure: step_back`), or with `to`
    the latest earlier stage whose traffic is at most `to` (an operator's partial rollback)."""
    if state.status not in (RUNNING, AWAITING_APPROVAL) or state.stage_index < 1:
        raise TransitionError(f"cannot step {state.name} back: it is {state.status} at stage {state.stage}; "
                              "a step back needs a running migration past its first stage")
    index = state.stage_index - 1
    if to is not None:
        earlier = [i for i in range(state.stage_index) if spec.stages[i].traffic <= to + 1e-9]
        if not earlier:
            offered = ", ".join(f"{s.name} {s.traffic * 100:g}%" for s in spec.stages[:state.stage_index])
            raise TransitionError(f"cannot step {state.name} back to {to * 100:g}%: no earlier stage is at or below "
                                  f"it (earlier stages: {offered}); `crossfade rollback` sends everything to legacy")
        index = earlier[-1]
    return Change(STEPPED_BACK, reason, _enter(spec, index, from_stage=state.stage))


def _steps_below(spec: Spec, state: State) -> list[float]:
    """The gradual rollback's steps still ahead: those below the current traffic (the last one is 0%)."""
    return [s for s in spec.rollback.steps if s < state.traffic]


def rollback_start_change(state: State, spec: Spec, reason: str) -> Change:
    """Begin a gradual rollback at the first of `rollback.steps` below the current traffic; with no such
    step above 0%, roll back at once."""
    if state.status in ENDED:
        raise TransitionError(f"cannot roll back {state.name}: it is {state.status}")
    steps = _steps_below(spec, state)
    if not steps or steps[0] <= 0.0:
        return rollback_change(state, reason, spec)
    return Change(ROLLBACK_STARTED, reason, {"from_stage": state.stage, "from_traffic": state.traffic,
                                             "traffic": steps[0], "steps": steps, **_kept_writes(state, spec)})


def rollback_step_change(state: State, spec: Spec, reason: str) -> Change:
    """The next step down of a gradual rollback; the last one (0%) completes it."""
    if state.status != ROLLING_BACK:
        raise TransitionError(f"{state.name} is {state.status}, not rolling back")
    steps = _steps_below(spec, state)
    if not steps or steps[0] <= 0.0:
        return Change(ROLLED_BACK, reason, {"from_stage": state.stage, "from_traffic": state.traffic,
                                            **_kept_writes(state, spec)})
    return Change(ROLLBACK_STEP, reason, {"traffic": steps[0], "from_traffic": state.traffic,
                                          **_kept_writes(state, spec)})


def position(state: State) -> tuple[Any, ...]:
    """Where a migration stands, as far as an operator's command is concerned (verdicts aside): a command
    decided at one position may be retried while the migration stays there."""
    return state.status, state.stage_index, state.attempt, state.spec_version


OPERATIONS: Final = ("start", "promote", "approve", "pause", "resume", "rollback", "abort", "restart", "step-back")
WEIGHS_PROGRESS: Final = frozenset({"promote", "approve"})
"""The operations that read the current stage's progress (promote checks it, approve takes legacy's cell from
it); any other is decided without the stage's telemetry, whose read costs time that grows with the stage."""


def operation(action: str, state: State, spec: Spec, reason: str | None = None, *, force: bool = False,
              progress: StageProgress, to: float | None = None) -> list[Change]:
    """The changes an operator's command makes, by its name: the one table the SDK, the CLI and the API share.

    `force` only matters to `promote`, `to` to `step-back`; `progress` (the current stage's, see
    `controller.stage_progress`) is what `promote` checks hold and `min_samples` against; `rollback` and
    `abort` refuse an empty reason.
    """
    match action:
        case "start":
            return [start_change(state, spec, reason)]
        case "promote":
            return [promote_change(state, spec, reason, force=force, progress=progress)]
        case "approve":
            return approve_changes(state, spec, reason, progress=progress)
        case "pause":
            return [pause_change(state, reason)]
        case "resume":
            return [resume_change(state, reason)]
        case "rollback":
            return [rollback_change(state, reason or "", spec)]
        case "abort":
            return [abort_change(state, reason or "", spec)]
        case "restart":
            return [restart_change(state, spec, reason)]
        case "step-back":
            return [step_back_change(state, spec, reason or "stepped back by an operator", to=to)]
    raise ValueError(f"unknown operation {action!r}; one of: {', '.join(OPERATIONS)}")
