"""The default metric source: the stored telemetry windows of a stage."""

from __future__ import annotations

import pytest

from crossfade.backends.sql import SQLBackend
from crossfade.events import State
from crossfade.metrics import DEFAULT, create_source
from crossfade.registry import ProviderConfigError
from crossfade.telemetry import Cell, Window


def test_the_default_source_reads_a_stages_stored_windows_from_just_before_its_entry(sqlite_url):
    backend = SQLBackend(sqlite_url)
    cell = Cell()
    cell.calls = 3
    backend.write_windows([Window("m", "s", "legacy", 20.0, 10.0, cell), Window("m", "s", "legacy", 40.0, 10.0, cell),
                           Window("m", "s", "legacy", 100.0, 10.0, cell),
                           Window("m", "other", "legacy", 100.0, 10.0, cell)])
    source = create_source(None)
    assert source.name == DEFAULT
    found = source.windows(backend, State("m", status="running", stage="s", stage_entered_at=95.0), None, 200.0)
    assert [(w.stage, w.start) for w in found] == [("s", 40.0), ("s", 100.0)]  # 60 s of margin
    backend.close()


def test_the_telemetry_source_takes_no_settings():
    with pytest.raises(ProviderConfigError, match=r"source.telemetry.url: unknown setting"):
        create_source({"telemetry": {"url": "x"}})
