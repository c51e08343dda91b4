"""What the Kubernetes routers share: settings, applying manifests with conflict retry, reading them back.

Manifests are applied with the official `kubernetes` client (the optional extra `crossfade[kubernetes]`),
imported only when a router first talks to a cluster. An object is created when absent, else merge-patched
with the `resourceVersion` it was read at, so a concurrent writer (a GitOps sync, an operator's kubectl)
makes the API server answer 409 Conflict instead of one write silently undoing the other; the router then
reads again and retries. `verify` reads the objects back and checks that what crossfade wrote is there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from crossfade.registry import ConfigProblem
from crossfade.routers import NOT_VERIFIED, VERIFIED, RouterError, Target, Verification

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
MANAGED_BY = {"app.kubernetes.io/managed-by": "crossfade"}


@dataclass(frozen=True, slots=True)
class Cluster:
    """How to reach the API server: a kubeconfig (and context), an explicit server URL, or in-cluster."""

    server: str = ""
    kubeconfig: str = ""
    context: str = ""
    token: str = ""
    timeout: float = 10.0
    retries: int = 5


class Settings:
    """Reads a router's settings, collecting every problem with its path."""

    def __init__(self, config: Mapping[str, Any], path: str, known: tuple[str, ...]) -> None:
        self.config = config
        self.path = path
        self.problems: list[ConfigProblem] = []
        for name in config:
            if name not in known:
                self.problems.append(ConfigProblem(f"{path}.{name}", f"unknown setting; known: {', '.join(known)}"))

    def problem(self, name: str, message: str) -> None:
        """Record one problem at `path.name`."""
        self.problems.append(ConfigProblem(f"{self.path}.{name}", message))

    def text(self, name: str, default: str | None = None, *, pattern: re.Pattern[str] | None = None,
             example: str = "") -> str:
        """A string setting; required when `default` is None."""
        value = self.config.get(name, default)
        if value is None:
            self.problem(name, f"required, e.g. {example}")
            return ""
        if not isinstance(value, str) or (pattern is not None and value and not pattern.match(value)):
            self.problem(name, f"expected {example or 'text'}, got {value!r}")
            return ""
        return value

    def name(self, name: str, default: str | None = None) -> str:
        """A Kubernetes object name (a DNS label)."""
        return self.text(name, default, pattern=_DNS_LABEL, example="a lowercase DNS label such as agent-cli")

    def header(self, name: str, default: str | None = None) -> str:
        """An HTTP header name."""
        return self.text(name, default, pattern=_HEADER, example="a header name such as x-user-id")

    def labels(self, name: str) -> dict[str, str]:
        """A required, non-empty mapping of pod labels."""
        value = self.config.get(name)
        if not isinstance(value, Mapping) or not value or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            self.problem(name, "required: the pod labels of this arm's workload, e.g. {version: v2}")
            return {}
        return dict(value)

    def service(self, name: str) -> tuple[str, int]:
        """A required backend Service as {name, port}."""
        value = self.config.get(name)
        if (not isinstance(value, Mapping) or not isinstance(value.get("name"), str)
                or not _DNS_LABEL.match(value["name"]) or not isinstance(value.get("port"), int)
                or isinstance(value.get("port"), bool) or not 0 < value["port"] < 65536):
            self.problem(name, "required: the arm's Service as {name: agent-cli-v2, port: 8080}")
            return "", 0
        return value["name"], value["port"]

    def cluster(self) -> Cluster:
        """The cluster settings shared by every Kubernetes router."""
        timeout = self.config.get("timeout", 10.0)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            self.problem("timeout", "expected seconds, a positive number")
            timeout = 10.0
        return Cluster(self.text("server", "", pattern=re.compile(r"^https?://"), example="https://host:6443"),
                       self.text("kubeconfig", ""), self.text("context", ""), self.text("token", ""),
                       float(timeout))


def dump(manifests: list[dict[str, Any]]) -> str:
    """Manifests as a multi-document YAML stream, for `kubectl apply -f -` or a GitOps repository."""
    return yaml.safe_dump_all(manifests, sort_keys=False)


def contains(live: Any, wanted: Any) -> bool:
    """True when everything in `wanted` is in `live`; the API server may add defaults, never change values."""
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(k in live and contains(live[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(live, list) and len(live) == len(wanted) and all(map(contains, live, wanted))
    if isinstance(wanted, float) or isinstance(live, float):
        return isinstance(live, int | float) and abs(float(live) - float(wanted)) < 1e-9
    return live == wanted


def _path(manifest: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
    group, version = manifest["apiVersion"].split("/")
    plural = manifest["kind"].lower() + "s"
    meta = manifest["metadata"]
    return group, version, meta["namespace"], plural, meta["name"]


class Client:
    """The Kubernetes API for custom objects, reached as the cluster settings say."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._api: Any = None
        self.conflicts = 0

    def api(self) -> Any:
        """The `CustomObjectsApi`, built on first use (the `kubernetes` package is an optional extra)."""
        if self._api is not None:
            return self._api
        try:
            from kubernetes import client, config
        except ImportError as exc:
            raise RouterError("the Kubernetes routers need the kubernetes client: "
                              "pip install 'crossfade[kubernetes]'") from exc
        c = self.cluster
        try:
            if c.server:
                configuration = client.Configuration(host=c.server)
                if c.token:
                    configuration.api_key = {"authorization": f"Bearer {c.token}"}
            elif c.kubeconfig or c.context:
                configuration = client.Configuration()
                config.load_kube_config(config_file=c.kubeconfig or None, context=c.context or None,
                                        client_configuration=configuration)
            else:
                configuration = client.Configuration()
                try:
                    config.load_incluster_config(client_configuration=configuration)
                except config.ConfigException:
                    config.load_kube_config(client_configuration=configuration)
        except Exception as exc:  # the kubernetes package raises several unrelated types for a bad config
            raise RouterError(f"cannot configure the Kubernetes client: {exc}") from exc
        self._api = client.CustomObjectsApi(client.ApiClient(configuration))
        return self._api

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn()
        except ApiException as exc:
            if exc.status in (404, 409):
                raise
            raise RouterError(f"{what}: HTTP {exc.status} {exc.reason}: {_message(exc)}") from exc
        except OSError as exc:
            raise RouterError(f"{what}: {exc}") from exc
        except Exception as exc:  # urllib3's connection errors are not OSErrors
            if type(exc).__module__.startswith("urllib3"):
                raise RouterError(f"{what}: {exc}") from exc
            raise

    def get(self, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
        """The live object, or None when there is none."""
        from kubernetes.client.exceptions import ApiException

        group, version, namespace, plural, name = _path(manifest)
        try:
            return self._call(f"reading {manifest['kind']} {namespace}/{name}", lambda: self.api().get_namespaced_custom_object(
                group, version, namespace, plural, name, _request_timeout=self.cluster.timeout))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise RouterError(f"reading {manifest['kind']} {namespace}/{name}: HTTP {exc.status}") from exc

    def apply(self, manifest: Mapping[str, Any]) -> None:
        """Create the object, or merge-patch it at the version read; on a conflict read again and retry."""
        from kubernetes.client.exceptions import ApiException

        group, version, namespace, plural, name = _path(manifest)
        what = f"applying {manifest['kind']} {namespace}/{name}"
        for _ in range(self.cluster.retries):
            live = self.get(manifest)
            try:
                if live is None:
                    self._call(what, lambda: self.api().create_namespaced_custom_object(
                        group, version, namespace, plural, dict(manifest), field_manager="crossfade",
                        _request_timeout=self.cluster.timeout))
                else:
                    patch = {**manifest, "metadata": {**manifest["metadata"],
                                                      "resourceVersion": live["metadata"]["resourceVersion"]}}
                    self._call(what, lambda: self.api().patch_namespaced_custom_object(
                        group, version, namespace, plural, name, patch, field_manager="crossfade",
                        _content_type="application/merge-patch+json", _request_timeout=self.cluster.timeout))
                return
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise RouterError(f"{what}: HTTP {exc.status}") from exc
                # Someone wrote the object between our read and our write (or created or deleted it).
                self.conflicts += 1
        raise RouterError(f"{what}: still conflicting after {self.cluster.retries} attempts; another writer "
                          "keeps changing it (a GitOps sync of an older manifest?)")

    def delete(self, manifest: Mapping[str, Any]) -> None:
        """Delete the object; nothing happens when it is already gone."""
        from kubernetes.client.exceptions import ApiException

        group, version, namespace, plural, name = _path(manifest)
        try:
            self._call(f"deleting {manifest['kind']} {namespace}/{name}", lambda: self.api().delete_namespaced_custom_object(
                group, version, namespace, plural, name, _request_timeout=self.cluster.timeout))
        except ApiException as exc:
            if exc.status != 404:
                raise RouterError(f"deleting {manifest['kind']} {namespace}/{name}: HTTP {exc.status}") from exc


def _message(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message", ""))[:300]
    except (TypeError, ValueError, AttributeError):
        return ""


Manifests = Callable[[Target], list[dict[str, Any]]]
# Beyond the spec being there: why a live object does not serve it yet (None when it does).
Check = Callable[[Mapping[str, Any], Mapping[str, Any]], str | None]


class ManifestRouter:
    """A router whose data plane is a set of Kubernetes objects rendered from the target."""

    def __init__(self, name: str, cluster: Cluster, manifests: Manifests, check: Check | None = None) -> None:
        self.name = name
        self.client = Client(cluster)
        self.manifests = manifests
        self.check = check

    def render(self, target: Target) -> str:
        """The manifests as YAML, for GitOps."""
        return dump(self.manifests(target))

    def sync(self, target: Target) -> None:
        """Apply every manifest (create or merge-patch, retrying on conflicts)."""
        for manifest in self.manifests(target):
            self.client.apply(manifest)

    def verify(self, target: Target) -> Verification:
        """Read every object back: verified when each holds the spec crossfade wrote and is in effect."""
        for manifest in self.manifests(target):
            live = self.client.get(manifest)
            where = f"{manifest['kind']} {manifest['metadata']['namespace']}/{manifest['metadata']['name']}"
            if live is None:
                return Verification(NOT_VERIFIED, f"{where} does not exist")
            if not contains(live.get("spec"), manifest["spec"]):
                return Verification(NOT_VERIFIED, f"{where} differs from {target.describe()} (changed by another "
                                                  "writer, or not yet applied)")
            problem = self.check(manifest, live) if self.check is not None else None
            if problem:
                return Verification(NOT_VERIFIED, f"{where}: {problem}")
        return Verification(VERIFIED, f"{target.candidate:.2%} candidate in the cluster")

    def remove(self, migration: str) -> None:
        """Delete the objects this router made for the migration."""
        for manifest in reversed(self.manifests(Target(migration, "", 0.0, 0.0))):
            self.client.delete(manifest)
