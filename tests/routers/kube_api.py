"""A small HTTP server on loopback that speaks the Kubernetes API for namespaced custom objects.

No cluster runs here, so the Kubernetes routers are tested with the real `kubernetes` client against this:
GET, POST, merge PATCH (honouring a `metadata.resourceVersion` precondition with 409 Conflict) and DELETE,
resourceVersion and generation bookkeeping, and, for HTTPRoutes, a gateway that marks each generation
Accepted. `interfere` makes another writer change an object between a client's read and its write.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PATH = re.compile(r"^/apis/([^/]+)/([^/]+)/namespaces/([^/]+)/([^/?]+)(?:/([^/?]+))?(?:\?.*)?$")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class KubeAPI:
    """The objects, keyed by (group, version, namespace, plural, name), and what happened to them."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, ...], dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.version = 0
        self.interferences = 0
        self.conflicts = 0
        self.requests: list[str] = []
        self.accept_routes = True

    def _bump(self, obj: dict[str, Any], spec_changed: bool) -> None:
        self.version += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.version)
        if spec_changed:
            meta["generation"] = meta.get("generation", 0) + 1
        if obj.get("kind") == "HTTPRoute" and self.accept_routes:
            parents = [{"parentRef": ref, "controllerName": "example.com/gateway",
                        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                        "observedGeneration": meta["generation"]}]}
                       for ref in obj.get("spec", {}).get("parentRefs", [])]
            obj["status"] = {"parents": parents}

    def interfere(self, times: int) -> None:
        """Before each of the next `times` patches, another writer changes the object (a label)."""
        self.interferences = times

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        match = _PATH.match(path)
        if match is None:
            return 404, _status(404, "NotFound", f"no route {path}")
        group, version, namespace, plural, name = match.groups()
        with self.lock:
            self.requests.append(f"{method} {plural}/{name or ''}")
            if name is None and method == "POST":
                key = (group, version, namespace, plural, body["metadata"]["name"])
                if key in self.objects:
                    return 409, _status(409, "AlreadyExists", "already exists")
                obj = json.loads(json.dumps(body))
                obj["metadata"]["namespace"] = namespace
                self._bump(obj, True)
                self.objects[key] = obj
                return 201, obj
            key = (group, version, namespace, plural, name or "")
            obj = self.objects.get(key)
            if obj is None:
                return 404, _status(404, "NotFound", f"{plural} {name!r} not found")
            if method == "GET":
                return 200, obj
            if method == "DELETE":
                del self.objects[key]
                return 200, _status(200, "Success", "deleted")
            if method == "PATCH":
                if self.interferences:
                    self.interferences -= 1
                    obj["metadata"].setdefault("labels", {})["touched-by"] = "someone-else"
                    self._bump(obj, False)
                wanted = (body.get("metadata") or {}).get("resourceVersion")
                if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
                    self.conflicts += 1
                    return 409, _status(409, "Conflict", "the object has been modified; please apply your "
                                                         "changes to the latest version and try again")
                patched = merge_patch(obj, body)
                changed = patched.get("spec") != obj.get("spec")
                self._bump(patched, changed)
                self.objects[key] = patched
                return 200, patched
        return 405, _status(405, "MethodNotAllowed", method)

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        """The stored object of this kind and name, in any namespace."""
        for key, obj in self.objects.items():
            if key[3] == plural and key[4] == name:
                return obj
        return None


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure" if code >= 400 else "Success",
            "reason": reason, "message": message, "code": code}


@contextmanager
def serve() -> Iterator[tuple[KubeAPI, str]]:
    """A running API on a loopback port; yields it and its URL."""
    api = KubeAPI()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            code, answer = api.handle(self.command, self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _answer  # noqa: N815 - the http.server spelling

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
