"""The Gateway API router: HTTPRoutes for every stage pass the CRD schema; apply, conflict retry and verify."""

from __future__ import annotations

import pytest

import crossfade
from crossfade.registry import ProviderConfigError
from crossfade.routers import NOT_VERIFIED, VERIFIED, RouterError, Target, routers_for

from .crd import validator
from .kube_api import serve
from .test_istio import SPEC, stage_targets

ROUTE = {"parent": "public", "namespace": "agents", "legacy": {"name": "agent-cli-v1", "port": 8080},
         "candidate": {"name": "agent-cli-v2", "port": 8080}, "hostnames": ["agents.example.com"],
         "key_header": "X-User-Id", "sticky_header": "X-Crossfade-Arm"}


def _router(server: str = "", **extra: object):
    config = {**ROUTE, **({"server": server} if server else {}), **extra}
    spec = crossfade.load_spec({**SPEC, "routers": [{"gateway_api": config}]})
    return spec, routers_for(spec)[0]


def test_routes_for_every_stage_pass_the_crd_schema():
    spec, router = _router()
    targets = stage_targets(spec)
    manifests = [m for t in targets for m in router.manifests(t)]
    assert validator().errors(manifests) == [""] * len(manifests)
    rules = router.manifests(targets[1])[0]["spec"]["rules"]
    split = rules[-1]
    assert [r["weight"] for r in split["backendRefs"]] == [9_500, 500]
    assert split["filters"] == [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"name": "agent-cli-v2", "port": 8080}, "percent": 20}}]
    assert rules[2] == {"matches": [{"headers": [{"type": "Exact", "name": "X-User-Id", "value": "vip-customer"}]}],
                        "backendRefs": [{"name": "agent-cli-v1", "port": 8080}]}
    # A mirror finer than a whole percent is written as a fraction.
    fine = router.manifests(Target("agent-cli", "s", 0.0, 0.005))[0]["spec"]["rules"][-1]["filters"][0]
    assert fine["requestMirror"]["fraction"] == {"numerator": 50, "denominator": 10_000}
    assert validator().errors(router.manifests(Target("agent-cli", "s", 0.0, 0.005))) == [""]
    rollback = router.manifests(targets[-1])[0]["spec"]["rules"]
    assert len(rollback) == 3 and "filters" not in rollback[-1]  # sticky legacy, deny, split at 0%


def test_too_many_keys_for_the_crd_is_a_clear_error():
    _, router = _router()
    keys = tuple(f"user-{i}" for i in range(16 * 64))
    with pytest.raises(RouterError, match="the Gateway API allows 16"):
        router.manifests(Target("agent-cli", "s", 0.1, 0.0, allow=keys))


def test_apply_waits_for_a_gateway_to_accept_retries_conflicts_and_removes():
    with serve() as (api, url):
        spec, router = _router(url)
        targets = stage_targets(spec)
        api.accept_routes = False
        router.sync(targets[2])
        seen = router.verify(targets[2])
        assert seen.status == NOT_VERIFIED and "no gateway has accepted" in seen.detail
        api.accept_routes = True
        api.interfere(3)
        router.sync(targets[3])
        assert api.conflicts == 3
        assert router.verify(targets[3]).status == VERIFIED
        route = api.get("httproutes", "agent-cli")
        assert route["status"]["parents"][0]["conditions"][0]["observedGeneration"] == route["metadata"]["generation"]
        assert router.verify(targets[2]).status == NOT_VERIFIED
        router.remove("agent-cli")
        assert api.get("httproutes", "agent-cli") is None


def test_bad_settings_are_named_by_path():
    with pytest.raises(ProviderConfigError) as caught:
        routers_for(crossfade.Spec("m", stages=(), routers=({"gateway_api": {"legacy": {"name": "Bad_Name", "port": 1},
                                                                                "timeout": -1, "server": "ftp://x"}},)))
    text = str(caught.value)
    for where in ("routers[0].gateway_api.parent: required", "routers[0].gateway_api.legacy",
                  "routers[0].gateway_api.candidate", "routers[0].gateway_api.timeout", "routers[0].gateway_api.server"):
        assert where in text
