"""The Istio router: manifests for every stage pass the CRD schemas; apply, conflict retry and verify against an API."""

from __future__ import annotations

import pytest

import crossfade
from crossfade.registry import ProviderConfigError
from crossfade.routers import NOT_VERIFIED, VERIFIED, RouterError, Target, routers_for

from .crd import validator
from .kube_api import serve

SPEC = {
    "name": "agent-cli",
    "stages": [{"name": "shadow", "traffic": 0, "shadow": "10%"}, {"name": "canary", "traffic": "5%", "shadow": "20%"},
               {"name": "quarter", "traffic": "25%"}, {"name": "half", "traffic": "50%"}, {"name": "all", "traffic": "100%"}],
    "allow": ["test-agent-alpha", "qa-1"],
    "deny": ["vip-customer"],
}
ISTIO = {"host": "agent-cli.agents.svc.cluster.local", "namespace": "agents",
         "legacy_labels": {"version": "v1"}, "candidate_labels": {"version": "v2"},
         "key_header": "X-User-Id", "sticky_header": "x-crossfade-arm", "port": 8080}


def stage_targets(spec: crossfade.Spec) -> list[Target]:
    """Every stage's target, and the rollback's."""
    targets = [Target(spec.name, s.name, s.traffic, s.shadow, spec.allow, spec.deny, salt=spec.salt) for s in spec.stages]
    return targets + [Target(spec.name, spec.stages[-1].name, 0.0, 0.0, (), spec.deny, rollback=True, salt=spec.salt)]


def _router(server: str = "", **extra: object):
    spec = crossfade.load_spec({**SPEC, "routers": [{"istio": {**ISTIO, **({"server": server} if server else {}), **extra}}]})
    return spec, routers_for(spec)[0]


def test_manifests_for_every_stage_pass_the_crd_schemas():
    check = validator()
    spec, router = _router()
    manifests = [m for t in stage_targets(spec) for m in router.manifests(t)]
    assert check.errors(manifests) == [""] * len(manifests)
    service = router.manifests(stage_targets(spec)[1])[1]["spec"]
    split = service["http"][-1]
    assert [r["weight"] for r in split["route"]] == [95, 5]
    assert split["mirrorPercentage"] == {"value": 20.0} and split["mirror"]["subset"] == "candidate"
    assert [h["name"] for h in service["http"]] == ["sticky-legacy", "sticky-candidate", "deny", "allow", "split"]
    assert service["http"][2]["match"] == [{"headers": {"x-user-id": {"exact": "vip-customer"}}}]
    rollback = router.manifests(stage_targets(spec)[-1])[1]["spec"]["http"]
    assert [h["name"] for h in rollback] == ["sticky-legacy", "deny", "split"]
    assert [r["weight"] for r in rollback[-1]["route"]] == [100, 0] and "mirror" not in rollback[-1]


def test_the_validators_catch_a_broken_manifest():
    spec, router = _router()
    bad = router.manifests(stage_targets(spec)[2])[1]
    bad["spec"]["http"][-1]["route"][0]["weight"] = "95"
    assert "weight must be integer" in validator().errors([bad])[0]


def test_apply_verifies_retries_conflicts_and_removes():
    with serve() as (api, url):
        spec, router = _router(url)
        targets = stage_targets(spec)
        assert "does not exist" in router.verify(targets[1]).detail
        router.sync(targets[1])
        assert router.verify(targets[1]).status == VERIFIED
        assert router.verify(targets[2]).status == NOT_VERIFIED
        # Another writer changes the DestinationRule (applied first) between each of our reads and writes, twice: we retry.
        api.interfere(2)
        router.sync(targets[2])
        assert api.conflicts == 2 and router.client.conflicts == 2
        assert router.verify(targets[2]).status == VERIFIED
        # A merge patch keeps the other writer's fields.
        assert api.get("destinationrules", "agent-cli")["metadata"]["labels"]["touched-by"] == "someone-else"
        live = api.get("virtualservices", "agent-cli")
        # An operator's edit (drift) is seen by verify, and the next sync puts the weights back.
        live["spec"]["http"][-1]["route"][0]["weight"] = 50
        live["spec"]["http"][-1]["route"][1]["weight"] = 50
        seen = router.verify(targets[2])
        assert seen.status == NOT_VERIFIED and "differs" in seen.detail
        router.sync(targets[2])
        assert router.verify(targets[2]).status == VERIFIED
        # A writer that never stops: a clear error after the retries.
        api.interfere(100)
        with pytest.raises(RouterError, match="still conflicting after 5 attempts"):
            router.sync(targets[3])
        api.interfere(0)
        router.remove("agent-cli")
        assert api.get("virtualservices", "agent-cli") is None and api.get("destinationrules", "agent-cli") is None
        router.remove("agent-cli")  # idempotent


def test_an_unreachable_api_is_a_router_error():
    spec, router = _router("http://127.0.0.1:9")
    with pytest.raises(RouterError, match="agents/agent-cli"):
        router.sync(stage_targets(spec)[0])


def test_bad_settings_are_named_by_path():
    with pytest.raises(ProviderConfigError) as caught:
        routers_for(crossfade.Spec("m", stages=(), routers=({"istio": {"legacy_labels": {"v": 1}, "port": 0,
                                                                         "key_header": "bad header"}},)))
    text = str(caught.value)
    for where in ("routers[0].istio.host: required", "routers[0].istio.legacy_labels", "routers[0].istio.candidate_labels",
                  "routers[0].istio.port", "routers[0].istio.key_header"):
        assert where in text
