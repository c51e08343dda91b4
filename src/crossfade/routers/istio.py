"""Istio router: a VirtualService with weighted subsets, a mirror with its percentage and header matches,
and the DestinationRule that defines the subsets.

Routes, in the order Istio tries them: a caller-set arm header (`sticky_header`, when configured: the way to
keep a user on one arm, since a weight is drawn per request), the deny keys and the allow keys matched on
`key_header`, then the weighted split of everything else, with `mirror` + `mirrorPercentage` copying a share
of it to the candidate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crossfade.registry import ProviderConfigError
from crossfade.routers import Target
from crossfade.routers._kube import MANAGED_BY, ManifestRouter, Settings

API = "networking.istio.io/v1beta1"
KNOWN = ("host", "namespace", "name", "legacy_labels", "candidate_labels", "key_header", "sticky_header",
         "gateways", "port", "server", "kubeconfig", "context", "token", "timeout")


class IstioManifests:
    """Renders the VirtualService and DestinationRule for a target. Pure."""

    def __init__(self, *, host: str, namespace: str, name: str, legacy_labels: Mapping[str, str],
                 candidate_labels: Mapping[str, str], key_header: str, sticky_header: str,
                 gateways: tuple[str, ...], port: int | None) -> None:
        self.host = host
        self.namespace = namespace
        self.name = name
        self.labels = {"legacy": dict(legacy_labels), "candidate": dict(candidate_labels)}
        self.key_header = key_header.lower()  # Istio matches header names in lower case only
        self.sticky_header = sticky_header.lower()
        self.gateways = gateways
        self.port = port

    def _destination(self, arm: str, weight: int | None = None) -> dict[str, Any]:
        destination: dict[str, Any] = {"host": self.host, "subset": arm}
        if self.port is not None:
            destination["port"] = {"number": self.port}
        route: dict[str, Any] = {"destination": destination}
        if weight is not None:
            route["weight"] = weight
        return route

    def _matching(self, name: str, header: str, values: list[str], arm: str) -> dict[str, Any]:
        return {"name": name, "match": [{"headers": {header: {"exact": v}}} for v in values],
                "route": [self._destination(arm)]}

    def __call__(self, target: Target) -> list[dict[str, Any]]:
        """The DestinationRule and the VirtualService for `target`."""
        name = self.name or target.migration
        meta = {"name": name, "namespace": self.namespace,
                "labels": {**MANAGED_BY, "crossfade.dev/migration": target.migration}}
        rule = {"apiVersion": API, "kind": "DestinationRule", "metadata": {**meta},
                "spec": {"host": self.host, "subsets": [{"name": arm, "labels": labels}
                                                        for arm, labels in self.labels.items()]}}
        http: list[dict[str, Any]] = []
        if self.sticky_header:
            # Only while the candidate serves: after a rollback a stale header must not keep anyone on it.
            arms = ["legacy", "candidate"] if target.candidate > 0 else ["legacy"]
            http += [self._matching(f"sticky-{arm}", self.sticky_header, [arm], arm) for arm in arms]
        deny = list(target.deny)
        allow = [k for k in target.allow if k not in target.deny]
        if deny:
            http.append(self._matching("deny", self.key_header, deny, "legacy"))
        if allow and target.candidate > 0:
            http.append(self._matching("allow", self.key_header, allow, "candidate"))
        candidate, legacy = target.weights()  # Istio takes whole percents
        split: dict[str, Any] = {"name": "split", "route": [self._destination("legacy", legacy),
                                                           self._destination("candidate", candidate)]}
        if target.mirror > 0 and candidate < 100:
            split["mirror"] = self._destination("candidate")["destination"]
            split["mirrorPercentage"] = {"value": round(target.mirror * 100, 4)}
        http.append(split)
        service: dict[str, Any] = {"hosts": [self.host], "http": http}
        if self.gateways:
            service["gateways"] = list(self.gateways)
        return [rule, {"apiVersion": API, "kind": "VirtualService", "metadata": meta, "spec": service}]


def create(config: Mapping[str, Any], path: str) -> ManifestRouter:
    """The Istio router from its settings (`host`, `legacy_labels`, `candidate_labels` are required)."""
    s = Settings(config, path, KNOWN)
    host = s.text("host", None, example="agent-cli.default.svc.cluster.local")
    gateways = config.get("gateways", [])
    if not isinstance(gateways, list) or not all(isinstance(g, str) for g in gateways):
        s.problem("gateways", "expected a list of gateway names, e.g. [istio-system/public]")
        gateways = []
    port = config.get("port")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
        s.problem("port", "expected a port number")
        port = None
    manifests = IstioManifests(
        host=host, namespace=s.name("namespace", "default"), name=s.name("name", ""),
        legacy_labels=s.labels("legacy_labels"), candidate_labels=s.labels("candidate_labels"),
        key_header=s.header("key_header", "x-crossfade-key"), sticky_header=s.header("sticky_header", ""),
        gateways=tuple(gateways), port=port)
    cluster = s.cluster()
    if s.problems:
        raise ProviderConfigError(s.problems)
    return ManifestRouter("istio", cluster, manifests)
