"""Kubernetes Gateway API router: an HTTPRoute with weighted backendRefs, a RequestMirror filter with a
percentage, and header matches for the allow and deny keys.

Rules, most specific first: a caller-set arm header (`sticky_header`, when configured), the deny and allow
keys on `key_header` (64 matches a rule, as the CRD allows), then the weighted split with its mirror.
Verification also asks the route's status: a gateway must have Accepted the current generation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crossfade.registry import ProviderConfigError
from crossfade.routers import RouterError, Target
from crossfade.routers._kube import MANAGED_BY, ManifestRouter, Settings

API = "gateway.networking.k8s.io/v1"
# The HTTPRoute CRD allows 16 rules of 64 matches each.
MAX_RULES = 16
MAX_MATCHES = 64
KNOWN = ("parent", "namespace", "name", "legacy", "candidate", "hostnames", "key_header", "sticky_header",
         "server", "kubeconfig", "context", "token", "timeout")


class RouteManifests:
    """Renders the HTTPRoute for a target. Pure."""

    def __init__(self, *, parent: str, namespace: str, name: str, legacy: tuple[str, int],
                 candidate: tuple[str, int], hostnames: tuple[str, ...], key_header: str,
                 sticky_header: str) -> None:
        self.parent = parent
        self.namespace = namespace
        self.name = name
        self.services = {"legacy": legacy, "candidate": candidate}
        self.hostnames = hostnames
        self.key_header = key_header
        self.sticky_header = sticky_header

    def _ref(self, arm: str, weight: int | None = None) -> dict[str, Any]:
        name, port = self.services[arm]
        ref: dict[str, Any] = {"name": name, "port": port}
        if weight is not None:
            ref["weight"] = weight
        return ref

    def _matching(self, header: str, values: list[str], arm: str) -> list[dict[str, Any]]:
        return [{"matches": [{"headers": [{"type": "Exact", "name": header, "value": v}]}
                             for v in values[i:i + MAX_MATCHES]], "backendRefs": [self._ref(arm)]}
                for i in range(0, len(values), MAX_MATCHES)]

    def __call__(self, target: Target) -> list[dict[str, Any]]:
        """The HTTPRoute for `target`; RouterError when the allow and deny lists need more rules than allowed."""
        rules: list[dict[str, Any]] = []
        if self.sticky_header:
            # Only while the candidate serves: after a rollback a stale header must not keep anyone on it.
            arms = ["legacy", "candidate"] if target.candidate > 0 else ["legacy"]
            for arm in arms:
                rules += self._matching(self.sticky_header, [arm], arm)
        rules += self._matching(self.key_header, list(target.deny), "legacy")
        if target.candidate > 0:
            rules += self._matching(self.key_header, [k for k in target.allow if k not in target.deny], "candidate")
        # Weights are relative integers: in basis points, the split is as fine as the SDK's buckets.
        candidate = round(target.candidate * 10_000)
        split: dict[str, Any] = {"backendRefs": [self._ref("legacy", 10_000 - candidate),
                                                 self._ref("candidate", candidate)]}
        if target.mirror > 0 and candidate < 10_000:
            mirror: dict[str, Any] = {"backendRef": self._ref("candidate")}
            percent = target.mirror * 100
            if abs(percent - round(percent)) < 1e-9:
                mirror["percent"] = round(percent)
            else:  # a share finer than a whole percent: the CRD's fraction, in basis points
                mirror["fraction"] = {"numerator": round(target.mirror * 10_000), "denominator": 10_000}
            split["filters"] = [{"type": "RequestMirror", "requestMirror": mirror}]
        rules.append(split)
        if len(rules) > MAX_RULES:
            raise RouterError(f"{len(target.allow) + len(target.deny)} allow and deny keys need {len(rules)} HTTPRoute "
                              f"rules; the Gateway API allows {MAX_RULES} ({MAX_MATCHES} keys each): keep long key "
                              "lists in the SDK or the proxy, or use a header the caller sets (sticky_header)")
        spec: dict[str, Any] = {"parentRefs": [{"name": self.parent}], "rules": rules}
        if self.hostnames:
            spec["hostnames"] = list(self.hostnames)
        meta = {"name": self.name or target.migration, "namespace": self.namespace,
                "labels": {**MANAGED_BY, "crossfade.dev/migration": target.migration}}
        return [{"apiVersion": API, "kind": "HTTPRoute", "metadata": meta, "spec": spec}]


def accepted(manifest: Mapping[str, Any], live: Mapping[str, Any]) -> str | None:
    """Why no gateway serves the live route's current generation yet (None once one has Accepted it)."""
    generation = live.get("metadata", {}).get("generation")
    for parent in (live.get("status") or {}).get("parents") or []:
        for condition in parent.get("conditions") or []:
            if condition.get("type") != "Accepted":
                continue
            if condition.get("status") != "True":
                return f"not accepted by {parent.get('parentRef', {}).get('name', 'its gateway')}: " \
                       f"{condition.get('reason', '')} {condition.get('message', '')}".strip()
            if generation is None or condition.get("observedGeneration", generation) >= generation:
                return None
    return "no gateway has accepted this generation of the route yet"


def create(config: Mapping[str, Any], path: str) -> ManifestRouter:
    """The Gateway API router from its settings (`parent`, `legacy`, `candidate` are required)."""
    s = Settings(config, path, KNOWN)
    hostnames = config.get("hostnames", [])
    if not isinstance(hostnames, list) or not all(isinstance(h, str) for h in hostnames):
        s.problem("hostnames", "expected a list of host names, e.g. [agents.example.com]")
        hostnames = []
    manifests = RouteManifests(
        parent=s.name("parent"), namespace=s.name("namespace", "default"), name=s.name("name", ""),
        legacy=s.service("legacy"), candidate=s.service("candidate"), hostnames=tuple(hostnames),
        key_header=s.header("key_header", "x-crossfade-key"), sticky_header=s.header("sticky_header", ""))
    cluster = s.cluster()
    if s.problems:
        raise ProviderConfigError(s.problems)
    return ManifestRouter("gateway_api", cluster, manifests, accepted)
