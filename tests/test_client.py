"""The client's own duties under attack and outage: no credential in any log line, and telemetry that waits
for a control plane through its restarts."""

from __future__ import annotations

import logging

import crossfade


def test_no_password_reaches_a_log_line_or_an_error(caplog):
    url = "postgresql://app:hunter2-s3cret@127.0.0.1:1/db?sslpassword=hunter3"
    with caplog.at_level(logging.DEBUG):
        client = crossfade.connect(url, refresh=0.05)
        mig = client.migration("m")
        assert mig.run("k", lambda: "legacy", lambda: "candidate") == "legacy"
        try:
            mig.start()
        except crossfade.BackendUnavailable as exc:
            error = str(exc)
        client.close()
    text = caplog.text + error + repr(client.url) + str(client.stats())
    assert "hunter2" not in text and "hunter3" not in text
    assert "app:***@127.0.0.1:1" in caplog.text


def test_telemetry_waits_out_three_server_restarts_and_is_counted_once(sqlite_url):
    """The control plane goes away three times while the host keeps serving calls; nothing is lost or
    doubled once it is back."""
    from conftest import start_control_plane

    from crossfade.server import serve_in_background

    plane, stop = start_control_plane(sqlite_url)
    port = int(plane.url.rsplit(":", 1)[1])
    operator = crossfade.connect(plane.url, token=plane.tokens["operator"], refresh=3600)
    operator.apply({"name": "m", "stages": [{"traffic": "50%"}, {"traffic": "100%"}]})
    operator.migration("m").start()
    operator.close()
    host = crossfade.connect(plane.url, token=plane.tokens["sdk"], refresh=3600, window=0.2)
    mig = host.migration("m")
    calls = 0
    try:
        for _ in range(3):
            for i in range(50):
                mig.run(i, lambda: "l", lambda: "c")
            calls += 50
            stop()  # the server goes down with windows unsent
            for i in range(50):
                mig.run(i, lambda: "l", lambda: "c")
            calls += 50
            for _ in range(8):  # many more ticks than the old retry budget of 5
                host.flush(everything=True)
            assert host.stats()["pending_windows"] > 0 and host.stats()["dropped_windows"] == 0
            _, stop = serve_in_background(plane.backend, port)
        host.flush(everything=True)
        assert host.stats()["pending_windows"] == 0 and host.stats()["dropped_calls"] == 0
        assert sum(w.cell.calls for w in plane.backend.windows("m")) == calls
    finally:
        host.close()
        stop()
        plane.backend.close()
