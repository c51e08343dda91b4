"""crossfade as the judge of Argo Rollouts and Flagger: each request as their documentation shows it."""

from __future__ import annotations

import time

import pytest

SPEC = {
    "stages": [{"name": "canary", "traffic": "10%", "min_samples": 200}, {"name": "half", "traffic": "50%", "approval": True},
               {"name": "full", "traffic": "100%"}],
    "gates": {"error_rate": {"max_increase": "2%"}},
    "analysis": {"interval": "1s"},
}
# Flagger's webhook payload as its documentation shows it (the checksum came in later versions).
FLAGGER = {"name": "podinfo", "namespace": "test", "phase": "Progressing", "checksum": "85d557f47b",
           "metadata": {"test": "all"}}


def _started(plane, name, spec=SPEC):
    assert plane.call("PUT", f"/v1/migrations/{name}", {"spec": spec})[0] == 200
    assert plane.call("POST", f"/v1/migrations/{name}/start", {"reason": "the rollout began"})[0] == 200


def _traffic(plane, name, *, candidate_errors):
    from crossfade.backends.base import Backend  # noqa: F401 - the plane's backend is a real SQL store
    from crossfade.telemetry import Cell, Window

    windows = []
    for arm, errors in (("legacy", 10), ("candidate", candidate_errors)):
        cell = Cell()
        cell.calls, cell.errors = 1000, errors
        for i in range(1000):
            cell.latency.add(0.01 + i * 1e-5)
        windows.append(Window(name, "canary", arm, time.time() - 5, 10.0, cell))
    plane.backend.write_windows(windows)


def _argo(plane, name):
    """What Argo Rollouts' web provider does: GET with the template's headers, take `{$.verdict}`."""
    status, body, headers = plane.call("GET", f"/v1/migrations/{name}/analysis", role="viewer")
    assert status == 200 and headers["Content-Type"] == "application/json"
    result = body["verdict"]
    return ("Successful" if result == "PASS" else "Failed" if result == "FAIL" else "Inconclusive"), body


def _flagger(plane, name, hook, *, token=None, body=None):
    """What Flagger does: POST its payload, no headers of its own; only the status code counts."""
    payload = {**(body or FLAGGER)}
    if token is not None:
        payload["metadata"] = {**payload["metadata"], "token": token}
    status, answer, _ = plane.call("POST", f"/v1/migrations/{name}/flagger/{hook}", payload, role=None)
    return status, answer


def test_argo_and_flagger_hold_without_evidence_then_promote_a_healthy_candidate(control_plane):
    _started(control_plane, "good")
    outcome, body = _argo(control_plane, "good")
    assert outcome == "Inconclusive" and body["verdict"] == "HOLD" and "samples" in body["reason"]
    token = control_plane.tokens["viewer"]
    assert _flagger(control_plane, "good", "confirm-promotion", token=token)[0] == 412
    assert _flagger(control_plane, "good", "rollback", token=token)[0] == 412
    assert _flagger(control_plane, "good", "rollout", token=token)[0] == 200
    _traffic(control_plane, "good", candidate_errors=10)
    outcome, body = _argo(control_plane, "good")
    assert outcome == "Successful" and body["ok"] and not body["failed"], body
    assert body["gates"]["error_rate"]["verdict"] in ("PASS", "INCONCLUSIVE")
    assert body["arms"]["candidate"]["calls"] == 1000
    status, answer = _flagger(control_plane, "good", "confirm-promotion", token=token)
    assert status == 200 and answer["verdict"] == "PASS"
    assert _flagger(control_plane, "good", "rollback", token=token)[0] == 412  # Flagger keeps the canary
    assert _flagger(control_plane, "good", "rollout", token=token)[0] == 200


def test_a_failing_gate_tells_argo_it_failed_and_flagger_to_roll_back(control_plane):
    _started(control_plane, "bad")
    _traffic(control_plane, "bad", candidate_errors=120)
    outcome, body = _argo(control_plane, "bad")
    assert outcome == "Failed" and body["failed"] and "error rate" in body["reason"], body
    token = control_plane.tokens["viewer"]
    status, answer = _flagger(control_plane, "bad", "rollback", token=token)
    assert status == 200 and answer["verdict"] == "FAIL"
    assert _flagger(control_plane, "bad", "confirm-promotion", token=token)[0] == 412
    status, answer = _flagger(control_plane, "bad", "rollout", token=token)
    assert status == 412 and "error rate" in answer["reason"]  # counted by Flagger as a failed check


def test_an_unreachable_metric_source_holds_and_never_asks_for_a_rollback(control_plane):
    spec = {**SPEC, "source": {"prometheus": {"url": "http://127.0.0.1:1", "timeout": "1s", "queries": {
        "calls": 'requests_total{arm="$arm"}', "errors": 'errors_total{arm="$arm"}'}}}}
    _started(control_plane, "blind", spec)
    outcome, body = _argo(control_plane, "blind")
    assert outcome == "Inconclusive" and "cannot be read" in body["reason"] and body["source"]["error"]
    token = control_plane.tokens["viewer"]
    assert _flagger(control_plane, "blind", "rollback", token=token)[0] == 412
    assert _flagger(control_plane, "blind", "confirm-promotion", token=token)[0] == 412
    detail = control_plane.call("GET", "/v1/migrations/blind", role="viewer")[1]
    assert detail["source"]["name"] == "prometheus" and "cannot be read" in detail["source"]["error"]
    # The controller says so once, in the log and the state, and /metrics shows it for alerting.
    deadline = time.monotonic() + 30
    while not control_plane.backend.state("blind").source_error and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [e.type for e in control_plane.backend.events("blind")].count("source_failed") == 1
    metrics = control_plane.call("GET", "/metrics", role="viewer")[1]
    assert 'crossfade_metric_source_failing{migration="blind"} 1.0' in metrics


@pytest.mark.parametrize("hook", ["confirm-promotion", "rollback", "rollout"])
def test_flagger_hooks_need_a_token_in_the_header_or_the_metadata(control_plane, hook):
    _started(control_plane, "m")
    assert _flagger(control_plane, "m", hook)[0] == 401
    assert _flagger(control_plane, "m", hook, token="not-a-token")[0] == 401
    status, _, _ = control_plane.call("POST", f"/v1/migrations/m/flagger/{hook}", FLAGGER, role="viewer")
    assert status in (200, 412)
    assert _flagger(control_plane, "nobody", hook, token=control_plane.tokens["viewer"])[0] == 404
    status, body, _ = control_plane.call("POST", f"/v1/migrations/m/flagger/{hook}", {"namespace": "test"},
                                         role="viewer")
    assert status == 422 and body["problems"][0]["path"].endswith("name")
