"""The event log: sealed events, the chain's verification, the fold, and the transitions' rules."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossfade.events import (
    GENESIS,
    Change,
    Event,
    State,
    TransitionError,
    apply_change,
    fold,
    pause_change,
    abort_change,
    approve_changes,
    promote_change,
    request_approval_change,
    restart_change,
    resume_change,
    rollback_change,
    start_change,
    verify,
)
from crossfade.events import StageProgress
from crossfade.spec import load_spec

SPEC = load_spec({"name": "m", "stages": [{"traffic": "0%", "shadow": "100%"}, {"traffic": "10%"},
                                           {"traffic": "50%"}, {"traffic": "100%"}]})


def _seal(state: State, change: Change, t: float = 1000.0) -> tuple[Event, State]:
    event = Event.create(state.name, state.seq + 1, change.type, time=t + state.seq, actor="tester",
                         reason=change.reason, payload=change.payload, prev_hash=state.head)
    return event, state.apply(event)


def _log(*makers) -> tuple[list[Event], State]:
    state, events = State("m"), []
    event, state = _seal(state, apply_change(state, SPEC, 1))
    events.append(event)
    for make in makers:
        event, state = _seal(state, make(state))
        events.append(event)
    return events, state


def test_a_manual_migration_walks_its_stages_and_completes():
    events, state = _log(
        lambda s: start_change(s, SPEC),
        lambda s: promote_change(s, SPEC),
        lambda s: promote_change(s, SPEC),
    )
    assert (state.status, state.stage, state.traffic) == ("running", "stage-3", 0.5)
    event, state = _seal(state, promote_change(state, SPEC))
    assert (state.status, state.stage, state.traffic) == ("completed", "stage-4", 1.0)
    assert fold("m", [*events, event]) == state


def test_start_enters_the_first_stage_with_its_shadow_rate():
    _, state = _log(lambda s: start_change(s, SPEC))
    assert (state.status, state.stage_index, state.traffic, state.shadow, state.attempt) == ("running", 0, 0.0, 1.0, 1)


def test_pause_resume_and_rollback():
    _, state = _log(lambda s: start_change(s, SPEC), lambda s: promote_change(s, SPEC), lambda s: pause_change(s))
    assert state.status == "paused"
    _, state = _seal(state, resume_change(state))
    assert (state.status, state.traffic) == ("running", 0.1)
    _, state = _seal(state, rollback_change(state, "p95 doubled"))
    assert (state.status, state.traffic, state.reason) == ("rolled_back", 0.0, "p95 doubled")
    _, state = _seal(state, restart_change(state, SPEC))
    assert (state.status, state.attempt, state.stage_index) == ("running", 2, 0)


@pytest.mark.parametrize(
    ("makers", "command", "message"),
    [
        ((), lambda s: promote_change(s, SPEC), "run `crossfade start` first"),
        ((lambda s: start_change(s, SPEC),), lambda s: start_change(s, SPEC), "already running"),
        ((lambda s: start_change(s, SPEC), pause_change), lambda s: promote_change(s, SPEC), "resume"),
        ((), lambda s: rollback_change(s, "why"), "no traffic is on the candidate"),
        ((lambda s: start_change(s, SPEC),), lambda s: rollback_change(s, " "), "needs a reason"),
        ((lambda s: start_change(s, SPEC),), resume_change, "not paused"),
    ],
)
def test_refused_transitions_say_why_and_what_to_run(makers, command, message):
    _, state = _log(*makers)
    with pytest.raises(TransitionError, match=message):
        command(state)


def test_applying_the_same_spec_twice_changes_nothing():
    _, state = _log()
    assert apply_change(state, SPEC, state.seq + 1) is None


def test_a_running_migration_keeps_its_stage_by_name_when_the_spec_changes():
    _, state = _log(lambda s: start_change(s, SPEC), lambda s: promote_change(s, SPEC))
    reordered = load_spec({"name": "m", "stages": [{"name": "stage-2", "traffic": "10%"}, {"traffic": "100%",
                                                                                         "name": "end"}]})
    _, after = _seal(state, apply_change(state, reordered, state.seq + 1))
    assert (after.stage, after.stage_index, after.spec_version) == ("stage-2", 0, state.seq + 1)
    dropped = load_spec({"name": "m", "stages": [{"traffic": "100%"}]})
    with pytest.raises(TransitionError, match="no stage 'stage-2'"):
        apply_change(state, dropped, state.seq + 1)
    resalted = dataclasses.replace(SPEC, salt="other")
    with pytest.raises(TransitionError, match="salt cannot change"):
        apply_change(state, resalted, state.seq + 1)


def test_an_intact_chain_verifies_and_links_from_genesis():
    events, state = _log(lambda s: start_change(s, SPEC), lambda s: promote_change(s, SPEC))
    assert events[0].prev_hash == GENESIS
    assert verify(events, head=(state.seq, state.head)) is None


def test_verify_names_the_first_edited_deleted_or_reordered_event():
    events, state = _log(*[lambda s: start_change(s, SPEC)] + [lambda s: promote_change(s, SPEC)] * 3)
    head = (state.seq, state.head)
    edited = list(events)
    edited[2] = dataclasses.replace(edited[2], actor="mallory")
    assert verify(edited, head=head).seq == 3
    payload = dataclasses.replace(events[3], payload={**events[3].payload, "traffic": 1.0})
    assert verify([*events[:3], payload, *events[4:]], head=head).seq == 4
    assert verify(events[:2] + events[3:], head=head).seq == 3
    swapped = list(events)
    swapped[1], swapped[2] = dataclasses.replace(events[2], seq=2), dataclasses.replace(events[1], seq=3)
    assert verify(swapped, head=head).seq == 2
    truncated = verify(events[:-1], head=head)
    assert truncated.seq == len(events) and "missing" in truncated.problem


def test_an_event_round_trips_through_its_dict_form():
    events, _ = _log(lambda s: start_change(s, SPEC))
    for event in events:
        assert Event.from_dict(event.to_dict()) == event


def test_state_round_trips_through_its_dict_form():
    _, state = _log(lambda s: start_change(s, SPEC), pause_change)
    assert State.from_dict(state.to_dict()) == state


COMMANDS = {
    "start": lambda s: start_change(s, SPEC),
    "promote": lambda s: promote_change(s, SPEC),
    "pause": pause_change,
    "resume": resume_change,
    "rollback": lambda s: rollback_change(s, "test"),
}


@given(st.lists(st.sampled_from(sorted(COMMANDS)), max_size=30))
def test_the_fold_of_the_log_is_the_state_built_step_by_step(commands):
    state, events = State("m"), []
    event, state = _seal(state, apply_change(state, SPEC, 1))
    events.append(event)
    for name in commands:
        try:
            change = COMMANDS[name](state)
        except TransitionError:
            continue
        event, state = _seal(state, change)
        events.append(event)
        assert 0.0 <= state.traffic <= 1.0
        assert state.status in ("running", "paused", "rolled_back", "completed")
    assert fold("m", events) == state
    assert verify(events, head=(state.seq, state.head)) is None


def test_unknown_event_types_keep_the_chain_position_and_leave_the_state():
    _, state = _log(lambda s: start_change(s, SPEC))
    event, after = _seal(state, Change("noted", None, {"note": "from a newer crossfade"}))
    assert (after.seq, after.head, after.status, after.stage) == (state.seq + 1, event.hash, "running", "stage-1")


SHADOWED = load_spec({"name": "m", "stages": [
    {"traffic": "0%", "shadow": "100%", "noise": "10%", "dual_write": True},
    {"traffic": "50%", "shadow_legacy": "20%"},
    {"traffic": "100%"},
]})


def test_stages_carry_their_shadow_settings_into_the_events_and_the_state():
    state = State("m")
    _, state = _seal(state, apply_change(state, SHADOWED, 1))
    started, state = _seal(state, start_change(state, SHADOWED))
    assert (started.payload["noise"], started.payload["dual_write"]) == (0.1, True)
    assert (state.shadow, state.noise, state.dual_write, state.shadow_legacy) == (1.0, 0.1, True, 0.0)
    _, state = _seal(state, promote_change(state, SHADOWED))
    assert (state.shadow, state.noise, state.dual_write, state.shadow_legacy) == (0.0, 0.0, False, 0.2)
    _, state = _seal(state, rollback_change(state, "answers differ"))
    assert (state.traffic, state.shadow_legacy) == (0.0, 0.0)
    assert State.from_dict(state.to_dict()) == state


def test_logs_and_snapshots_written_before_shadow_settings_still_fold():
    events, state = _log(lambda s: start_change(s, SPEC))
    assert "noise" not in events[-1].payload and "shadow_legacy" not in events[-1].payload
    old_snapshot = {k: v for k, v in state.to_dict().items() if k not in ("shadow_legacy", "noise", "dual_write")}
    assert State.from_dict(old_snapshot) == state == fold("m", events)
    assert (state.shadow_legacy, state.noise, state.dual_write) == (0.0, 0.0, False)

def test_an_approval_is_requested_then_given_and_the_stage_entered():
    _, state = _log(lambda s: start_change(s, SPEC))
    event, state = _seal(state, request_approval_change(state, SPEC))
    assert state.status == "awaiting_approval" and event.payload["next_stage"] == "stage-2"
    with pytest.raises(TransitionError, match="crossfade approve"):
        promote_change(state, SPEC)
    approved, promoted = approve_changes(state, SPEC, "looks fine")
    _, state = _seal(state, approved)
    _, state = _seal(state, promoted)
    assert (state.status, state.stage, promoted.payload["approved"]) == ("running", "stage-2", True)
    with pytest.raises(TransitionError, match="not awaiting approval"):
        approve_changes(state, SPEC)


def test_a_failing_gate_refuses_promotion_unless_forced():
    _, state = _log(lambda s: start_change(s, SPEC))
    gates = [{"gate": "error_rate", "verdict": "FAIL"}, {"gate": "latency", "verdict": "PASS"}]
    _, state = _seal(state, Change("verdict", None, {"stage": "stage-1", "gates": gates}))
    assert state.verdict("error_rate") == "FAIL"
    with pytest.raises(TransitionError, match="gate error_rate FAILs"):
        promote_change(state, SPEC)
    forced = promote_change(state, SPEC, force=True)
    assert forced.payload["forced"] and forced.payload["failing_gates"] == ["error_rate"]
    _, state = _seal(state, forced)
    assert state.verdicts == ()  # a new stage starts with no verdicts


def test_abort_ends_the_attempt_and_restart_begins_the_next():
    _, state = _log(lambda s: start_change(s, SPEC), lambda s: promote_change(s, SPEC))
    _, state = _seal(state, abort_change(state, "vendor contract ended"))
    assert (state.status, state.traffic) == ("aborted", 0.0)
    with pytest.raises(TransitionError, match="crossfade restart"):
        start_change(state, SPEC)
    _, state = _seal(state, restart_change(state, SPEC))
    assert (state.status, state.stage, state.attempt) == ("running", "stage-1", 2)
    with pytest.raises(TransitionError, match="only a rolled-back or aborted"):
        restart_change(state, SPEC)


def test_every_operation_has_one_entry_in_the_shared_table():
    from crossfade.events import OPERATIONS, operation

    _, state = _log(lambda s: start_change(s, SPEC))
    ready = StageProgress(0.0, 0, 0)
    assert [c.type for c in operation("promote", state, SPEC, "ok", progress=ready)] == ["promoted"]
    assert [c.type for c in operation("pause", state, SPEC, progress=ready)] == ["paused"]
    with pytest.raises(TransitionError, match="needs a reason"):
        operation("rollback", state, SPEC, progress=ready)
    with pytest.raises(ValueError, match="unknown operation 'launch'"):
        operation("launch", state, SPEC, progress=ready)
    assert len(OPERATIONS) == 8


GUARDED = load_spec({"name": "m", "stages": [{"traffic": "10%", "hold": "1h", "min_samples": 100},
                                             {"traffic": "50%", "approval": True}, {"traffic": "100%"}]})


def test_a_plain_promote_never_enters_a_stage_that_needs_an_approval():
    _, state = _log(lambda s: start_change(s, GUARDED))
    ready = StageProgress(0.0, 500, 500)
    with pytest.raises(TransitionError, match="stage stage-2 needs an approval; run `crossfade approve m`"):
        promote_change(state, GUARDED, progress=ready)
    with pytest.raises(TransitionError, match="not awaiting approval"):
        approve_changes(state, GUARDED)  # until the controller has judged the stage ready and asked
    forced = promote_change(state, GUARDED, "vendor deadline", force=True, progress=ready)
    assert (forced.payload["forced"], forced.payload["approval_bypassed"]) == (True, True)


def test_promote_keeps_the_stage_hold_and_min_samples():
    spec = load_spec({"name": "m", "stages": [{"traffic": "10%", "hold": "1h", "min_samples": 100},
                                              {"traffic": "100%"}]})
    _, state = _log(lambda s: start_change(s, spec))
    with pytest.raises(TransitionError, match="the hold has 20m left"):
        promote_change(state, spec, progress=StageProgress(1200.0, 500, 500))
    with pytest.raises(TransitionError, match="12 candidate and 400 legacy calls of the 100 per arm needed"):
        promote_change(state, spec, progress=StageProgress(0.0, 12, 400))
    forced = promote_change(state, spec, force=True, progress=StageProgress(1200.0, 12, 400))
    assert forced.payload["unmet"] == ["the hold has 20m left",
                                       "12 candidate and 400 legacy calls of the 100 per arm needed"]
    assert promote_change(state, spec, progress=StageProgress(0.0, 100, 100)).payload["stage"] == "stage-2"
