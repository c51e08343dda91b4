"""The router interface: targets from a migration's state, finding routers by name, the SDK default."""

from __future__ import annotations

import pytest

import crossfade
from crossfade.events import State
from crossfade.registry import ProviderConfigError
from crossfade.routers import NOT_IMPLEMENTED, ROUTERS, VERIFIED, Target, Verification, check, create, routers_for


def _spec(**extra: object) -> crossfade.Spec:
    return crossfade.load_spec({"name": "m", "stages": [{"name": "a", "traffic": "10%", "shadow": "5%"},
                                                         {"name": "b", "traffic": "100%"}],
                                "allow": ["alice"], "deny": ["bob"], **extra})


def test_every_router_module_is_found_by_name():
    assert ROUTERS.names() == ["gateway_api", "istio", "nginx", "sdk"]


def test_a_target_follows_the_state_and_sends_everything_to_legacy_when_the_candidate_may_not_serve():
    spec = _spec()
    running = State("m", status="running", stage="a", traffic=0.1, shadow=0.05)
    assert Target.from_state(running, spec) == Target("m", "a", 0.1, 0.05, ("alice",), ("bob",), False, "m")
    assert Target.from_state(running, spec) == Target.for_stage(spec, "a")
    for status in ("paused", "draft"):
        stopped = Target.from_state(State("m", status=status, stage="a", traffic=0.1, shadow=0.05), spec)
        assert (stopped.candidate, stopped.mirror, stopped.allow, stopped.deny) == (0.0, 0.0, (), ("bob",))
    rolled = Target.from_state(State("m", status="rolled_back", stage="a"), spec)
    assert rolled.rollback and rolled.candidate == 0.0
    ramping_down = Target.from_state(State("m", status="rolling_back", stage="b", traffic=0.25), spec)
    assert ramping_down.rollback and ramping_down.candidate == 0.25
    assert Target("m", "b", 0.333, 0.0).weights() == (33, 67)
    assert Target("m", "a", 0.1, 0.05).describe() == "10.00% candidate, 5.00% mirrored (stage a)"


def test_the_sdk_is_the_router_when_a_spec_names_none():
    [router] = routers_for(_spec())
    assert router.name == "sdk"
    target = Target("m", "a", 0.1, 0.0)
    router.sync(target)
    assert router.verify(target) == Verification(VERIFIED, "the SDK reads the routing table from the backend")
    router.remove("m")
    with pytest.raises(ProviderConfigError, match="routers.sdk.port: unknown setting"):
        ROUTERS.create("sdk", {"port": 1}, "routers.sdk")
    assert not Verification(NOT_IMPLEMENTED).verified


def test_router_entries_are_checked_with_every_problem_and_its_path():
    problems = check([{"istio": {"host": "h"}}, {"nginx": "yes"}, {"a": {}, "b": {}}])
    text = "\n".join(map(str, problems))
    assert "routers[0].istio.legacy_labels" in text and "routers[0].istio.candidate_labels" in text
    assert "routers[1].nginx: expected a mapping of settings" in text
    assert "routers[2]: expected one router as {name: {settings}}" in text
    with pytest.raises(ProviderConfigError, match="unknown router 'envoy'"):
        create({"envoy": {}}, "routers[0]")
