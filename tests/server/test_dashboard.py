"""The dashboard end to end in headless Chromium (Debian's, driven by Playwright): open a running migration,
approve a stage and roll back, seeing each change; screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed with apt when missing and we are root; fails under CI=true otherwise."""
    if not os.path.exists(CHROMIUM) and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, capture_output=True, timeout=1200)
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing and could not be installed (apt-get install chromium, as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def test_open_a_running_migration_approve_a_stage_step_back_and_roll_back(chromium, tmp_path, receiver, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    from conftest import start_control_plane
    from crossfade.backends import ConflictError
    from crossfade.events import request_approval_change, seal
    from crossfade.spec import load_spec
    from crossfade.telemetry import Cell

    monkeypatch.setenv("HOOK_KEY", "k")
    plane, stop = start_control_plane(f"sqlite:///{tmp_path / 'cf.db'}", open_reads=True)
    try:
        spec = {"stages": [{"name": "canary", "traffic": "10%"}, {"name": "half", "traffic": "50%", "approval": True},
                           {"name": "all", "traffic": "100%"}],
                "triggers": [{"metric": "error_rate", "above": "5%", "window": "5m"}],
                "notify": [{"name": "ops-hook", "webhook": {"url": receiver.url, "secret_env": "HOOK_KEY"},
                            "events": ["stepped_back", "rolled_back"]}]}
        assert plane.call("PUT", "/v1/migrations/checkout", {"spec": spec})[0] == 200
        assert plane.call("POST", "/v1/migrations/checkout/start", {"reason": "go"})[0] == 200
        now = time.time()
        windows = []
        for k in range(6):  # a few windows per arm, so the charts have lines to draw
            for arm, latency, errors in (("legacy", 0.010, 1), ("candidate", 0.012, 2)):
                cell = Cell()
                cell.calls, cell.errors = 200, errors
                for i in range(200):
                    cell.latency.add(latency * (1 + i / 200))
                    cell.time_first_chunk(latency / 4)  # streamed calls: their first chunk comes sooner
                windows.append({"migration": "checkout", "stage": "canary", "arm": arm, "start": now - 60 + 10 * k,
                                "length": 10.0, "cell": cell.to_dict()})
        assert plane.call("POST", "/v1/telemetry", {"windows": windows}, role="sdk")[0] == 200
        # The approval the controller asks for when a stage is done, sealed here; the server's own controller
        # runs too (it writes verdicts), so a conflicting append is retried on the new state.
        while True:
            state = plane.backend.state("checkout")
            after, events = seal(state, [request_approval_change(state, load_spec(plane.backend.spec("checkout")))],
                                 actor="controller", now=time.time())
            try:
                plane.backend.append("checkout", state.seq, events, state=after)
                break
            except ConflictError:
                continue

        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 1600})
            page.goto(f"{plane.url}/#/m/checkout")
            expect(page.locator("#stage")).to_have_text("canary")
            expect(page.locator(".step.current")).to_contain_text("canary")
            expect(page.locator("#approve")).to_be_visible()
            expect(page.locator("#charts svg polyline")).not_to_have_count(0)
            expect(page.locator("#arms")).to_contain_text("first chunk p99")
            expect(page.locator('#timeline li[data-type="approval_requested"]')).to_have_count(1)
            page.screenshot(path=str(ARTIFACTS / "dashboard-1-awaiting-approval.png"), full_page=True)

            page.click("#approve")
            page.fill("#token-input", plane.tokens["operator"])
            page.click("#token-ok")
            expect(page.locator("#stage")).to_have_text("half")
            expect(page.locator(".step.current")).to_contain_text("half")
            expect(page.locator("#approve")).to_have_count(0)
            expect(page.locator('#timeline li[data-type="approved"]')).to_contain_text("by operator-user")
            page.screenshot(path=str(ARTIFACTS / "dashboard-2-approved.png"), full_page=True)

            page.fill("#reason", "p99 creeping")
            page.click("#stepback")  # the operator token was asked for once: no dialog this time
            expect(page.locator("#stage")).to_have_text("canary")
            expect(page.locator('#timeline li[data-type="stepped_back"]')).to_contain_text("p99 creeping")
            expect(page.locator('#notifications tr[data-kind="stepped_back"]')).to_contain_text("ops-hook")
            expect(page.locator('#notifications tr[data-kind="stepped_back"] .delivery')).to_have_text("delivered")

            page.fill("#reason", "p95 doubled")
            page.click("#rollback")
            expect(page.locator("#status")).to_have_text("rolled back")
            expect(page.locator('#timeline li[data-type="rolled_back"]')).to_contain_text("p95 doubled")
            page.screenshot(path=str(ARTIFACTS / "dashboard-3-rolled-back.png"), full_page=True)
            browser.close()
        mine = [e for e in plane.backend.events("checkout") if e.actor == "operator-user"]
        assert [e.type for e in mine] == ["applied", "started", "approved", "promoted", "stepped_back", "rolled_back"]
    finally:
        stop()


def test_text_from_tokens_and_operators_never_runs_as_script(chromium, tmp_path):
    """Stored XSS through a description, a reason and a token's name: shown as text, and the page's policy
    would refuse an inline script even if one slipped through."""
    from playwright.sync_api import expect, sync_playwright

    from conftest import start_control_plane
    from crossfade.tokens import new_token, token_hash

    plane, stop = start_control_plane(f"sqlite:///{tmp_path / 'cf.db'}", open_reads=True)
    try:
        payload = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
        secret = new_token()
        plane.backend.create_token(payload, "operator", token_hash(secret), time.time())
        spec = {"description": payload, "stages": [{"name": "canary", "traffic": "10%"}, {"traffic": "100%"}]}
        assert plane.call("PUT", "/v1/migrations/x", {"spec": spec}, token=secret)[0] == 200
        assert plane.call("POST", "/v1/migrations/x/start", {"reason": payload}, token=secret)[0] == 200
        assert plane.call("POST", "/v1/migrations/x/rollback", {"reason": payload}, token=secret)[0] == 200
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
            page = browser.new_page()
            violations: list[str] = []
            page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(f"{plane.url}/#/m/x")
            expect(page.locator('#timeline li[data-type="rolled_back"]')).to_contain_text("onerror")
            assert page.evaluate("window.__xss") is None
            # An inline script injected by any other route is refused by the policy.
            page.evaluate("""() => {
                document.body.insertAdjacentHTML('beforeend', '<img id=probe src=x onerror="window.__xss=3">');
                document.getElementById('probe').addEventListener('error', () => { window.__errored = true; });
            }""")
            # The image failed: its handler had its chance. (Not wait_for_function: when its first check is
            # false it polls by evaluating a string in the page, which this very policy refuses.)
            deadline = time.monotonic() + 60
            while page.evaluate("window.__errored") is not True:
                assert time.monotonic() < deadline, "the probe image never reported its failed load"
                page.wait_for_timeout(20)
            assert page.evaluate("window.__xss") is None
            browser.close()
    finally:
        stop()


def test_without_a_token_the_dashboard_says_how_to_sign_in_then_shows_holds_as_the_spec_writes_them(chromium,
                                                                                                  tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from conftest import start_control_plane

    plane, stop = start_control_plane(f"sqlite:///{tmp_path / 'cf.db'}", open_reads=False)
    try:
        spec = {"stages": [{"name": "canary", "traffic": "10%", "hold": "1h30m"}, {"name": "all", "traffic": "100%"}],
                "gates": {"error_rate": {"max_increase": "1%"}}}
        assert plane.call("PUT", "/v1/migrations/checkout", {"spec": spec})[0] == 200
        assert plane.call("POST", "/v1/migrations/checkout/start", {"reason": "go"})[0] == 200
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
            page = browser.new_page()
            page.goto(f"{plane.url}/#/m/checkout")
            help_text = page.locator("#signin-help")
            expect(help_text).to_contain_text("needs a token to read")
            expect(help_text).to_contain_text("crossfade token create --role viewer")
            page.click("#signin")
            page.fill("#token-input", plane.tokens["viewer"])
            page.click("#token-ok")
            expect(page.locator('.step[data-stage="canary"]')).to_contain_text("hold 1h30m")
            expect(page.locator("#signin-help")).to_have_count(0)
            browser.close()
    finally:
        stop()


def test_the_migration_page_shows_each_routers_state(chromium, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from conftest import start_control_plane

    plane, stop = start_control_plane(f"sqlite:///{tmp_path / 'cf.db'}", open_reads=True)
    try:
        # The SDK router, named explicitly: the server's own controller loop syncs and verifies it.
        spec = {"stages": [{"name": "canary", "traffic": "10%"}, {"name": "all", "traffic": "100%"}],
                "routers": [{"sdk": {}}]}
        assert plane.call("PUT", "/v1/migrations/routed", {"spec": spec})[0] == 200
        assert plane.call("POST", "/v1/migrations/routed/start", {"reason": "go"})[0] == 200
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 1200})
            page.goto(f"{plane.url}/#/m/routed")
            router = page.locator('.router[data-router="sdk"]')
            expect(router).to_contain_text("verified", timeout=60_000)
            expect(router).to_contain_text("10% candidate")
            browser.close()
        assert plane.call("GET", "/v1/migrations/routed")[1]["state"]["routers"][0][:3] == ["sdk", "verified", 0.1]
    finally:
        stop()


def test_a_metric_source_that_cannot_be_read_is_shown_as_holding_the_stage(chromium, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from conftest import start_control_plane

    plane, stop = start_control_plane(f"sqlite:///{tmp_path / 'cf.db'}", open_reads=True)
    try:
        spec = {"stages": [{"name": "canary", "traffic": "10%"}, {"name": "all", "traffic": "100%"}],
                "source": {"prometheus": {"url": "http://127.0.0.1:1", "timeout": "1s", "preset": "istio"}}}
        assert plane.call("PUT", "/v1/migrations/mesh", {"spec": spec})[0] == 200
        assert plane.call("POST", "/v1/migrations/mesh/start", {"reason": "go"})[0] == 200
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 1200})
            page.goto(f"{plane.url}/#/m/mesh")
            alert = page.locator(".source-failed")
            expect(alert).to_contain_text("Metric source prometheus cannot be read")
            expect(alert).to_contain_text("no promotion, no rollback")
            expect(page.locator('#timeline li[data-type="source_failed"]')).to_have_count(1)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-source-failed.png"), full_page=True)
            browser.close()
    finally:
        stop()


PROGRAM = """program: checkout-move
components:
  - {name: catalog, spec: catalog.yaml}
  - {name: pricing, spec: pricing.yaml, after: [catalog]}
  - {name: payments, spec: payments.yaml, after: [pricing]}
  - {name: search, spec: search.yaml, after: [catalog]}
"""


def _program(tmp_path: Path):
    from crossfade.program import load_program

    for name, hold in (("catalog", "1d"), ("pricing", "2d"), ("payments", "3d"), ("search", "1d")):
        (tmp_path / f"{name}.yaml").write_text(
            f"name: {name}\nstages:\n  - {{name: canary, traffic: 5%, hold: {hold}}}\n"
            f"  - {{name: half, traffic: 50%, hold: {hold}}}\n  - {{name: all, traffic: 100%}}\n")
    (tmp_path / "program.yaml").write_text(PROGRAM)
    return load_program(tmp_path / "program.yaml")


def test_a_program_shows_each_component_s_state_the_critical_path_and_the_share_done(chromium, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from conftest import start_control_plane

    program = _program(tmp_path)
    plane, stop = start_control_plane(f"sqlite:///{tmp_path / 'cf.db'}", open_reads=True, programs=[program])
    try:
        for c in program.components:
            if c.name != "payments":
                assert plane.call("PUT", f"/v1/migrations/{c.spec.name}", {"spec": c.spec.to_dict()})[0] == 200
                assert plane.call("POST", f"/v1/migrations/{c.spec.name}/start", {"reason": "go"})[0] == 200
        for _ in range(2):
            assert plane.call("POST", "/v1/migrations/catalog/promote", {"reason": "done", "force": True})[0] == 200
        assert plane.call("POST", "/v1/migrations/pricing/promote", {"reason": "canary passed", "force": True})[0] == 200
        assert plane.call("POST", "/v1/migrations/search/rollback", {"reason": "index drift"})[0] == 200
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"{plane.url}/#/")
            row = page.locator('#programs tr[data-program="checkout-move"]')
            expect(row).to_contain_text("1 of 4")
            row.locator("a").click()
            rows = page.locator("tr.component")
            expect(rows).to_have_count(4)
            expect(page.locator('tr[data-component="catalog"] .component-state')).to_have_text("completed")
            expect(page.locator('tr[data-component="pricing"] .component-state')).to_have_text(
                "running at stage half (50%)")
            expect(page.locator('tr[data-component="payments"] .component-state')).to_have_text("waiting on pricing")
            expect(page.locator('tr[data-component="search"] .component-state')).to_have_text("rolled back")
            # Holds: catalog 2d, pricing 4d, payments 6d, search 2d; done: catalog all, pricing half of its stages.
            expect(page.locator("#percent")).to_have_text("28.6%")
            expect(page.locator("#critical-path")).to_contain_text("catalog → pricing → payments")
            expect(page.locator('tr[data-component="payments"]')).to_contain_text("critical")
            page.screenshot(path=str(ARTIFACTS / "dashboard-program.png"), full_page=True)
            browser.close()
    finally:
        stop()


def test_the_program_api_needs_a_viewer_token_and_names_the_known_programs(tmp_path):
    from conftest import start_control_plane

    program = _program(tmp_path)
    plane, stop = start_control_plane(f"sqlite:///{tmp_path / 'cf.db'}", programs=[program])
    try:
        assert plane.call("GET", "/v1/programs/checkout-move", role=None)[0] == 401
        status, body, _ = plane.call("GET", "/v1/programs/checkout-move", role="viewer")
        assert status == 200 and body["percent"] == 0 and body["critical_path"] == ["catalog", "pricing", "payments"]
        assert [c["summary"] for c in body["components"]] == [
            "ready to start", "waiting on catalog", "waiting on catalog", "waiting on pricing"]
        status, body, _ = plane.call("GET", "/v1/programs/nope", role="viewer")
        assert status == 404 and body["error"] == "no program named 'nope'; known: checkout-move"
    finally:
        stop()
