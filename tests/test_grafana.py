"""The Grafana dashboard: valid against the dashboard model of the schema version it declares, and every panel's
query names series that a control plane's /metrics really exposes."""

from __future__ import annotations

import json
import re

import jsonschema
from typer.testing import CliRunner

from crossfade.cli import app
from crossfade.grafana import SCHEMA_VERSION, dashboard

_DATASOURCE = {"type": "object", "properties": {"type": {"type": "string"}, "uid": {"type": "string"}}}
# Grafana's dashboard kind, schema 0.0 (schemaVersion 36), as its reference documents it
# (docs/sources/developers/kinds/core/dashboard/schema-reference.md): the properties a dashboard, its annotation
# queries, template variables and panels use, with their types and required fields.
GRAFANA_DASHBOARD_36 = {
    "type": "object",
    "required": ["schemaVersion"],
    "properties": {
        "schemaVersion": {"const": 36},
        "uid": {"type": "string", "minLength": 8, "maxLength": 40},
        "title": {"type": "string"}, "description": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "timezone": {"type": "string"}, "editable": {"type": "boolean"},
        "graphTooltip": {"enum": [0, 1, 2]}, "version": {"type": "integer", "minimum": 0},
        "refresh": {"type": "string", "pattern": r"^\d+[smhd]$"},
        "time": {"type": "object", "required": ["from", "to"],
                 "properties": {"from": {"type": "string"}, "to": {"type": "string"}}},
        "annotations": {"type": "object", "properties": {"list": {"type": "array", "items": {
            "type": "object", "required": ["datasource", "enable", "iconColor", "name"],
            "properties": {"datasource": _DATASOURCE, "enable": {"type": "boolean"}, "iconColor": {"type": "string"},
                           "name": {"type": "string"}, "hide": {"type": "boolean"}}}}}},
        "templating": {"type": "object", "properties": {"list": {"type": "array", "items": {
            "type": "object", "required": ["name", "type"],
            "properties": {"name": {"type": "string"}, "label": {"type": "string"},
                           "type": {"enum": ["query", "adhoc", "constant", "datasource", "interval", "textbox",
                                             "custom", "system"]},
                           "datasource": _DATASOURCE, "multi": {"type": "boolean"},
                           "includeAll": {"type": "boolean"}, "refresh": {"enum": [0, 1, 2]}}}}}},
        "panels": {"type": "array", "items": {
            "type": "object", "required": ["type", "gridPos"],
            "properties": {
                "id": {"type": "integer", "minimum": 0}, "type": {"type": "string", "minLength": 1},
                "title": {"type": "string"}, "description": {"type": "string"}, "datasource": _DATASOURCE,
                "gridPos": {"type": "object", "required": ["h", "w", "x", "y"], "properties": {
                    "h": {"type": "integer", "minimum": 1}, "w": {"type": "integer", "minimum": 1, "maximum": 24},
                    "x": {"type": "integer", "minimum": 0, "maximum": 23}, "y": {"type": "integer", "minimum": 0}}},
                "targets": {"type": "array", "items": {"type": "object", "required": ["refId"], "properties": {
                    "refId": {"type": "string"}, "datasource": _DATASOURCE}}},
                "fieldConfig": {"type": "object", "required": ["defaults", "overrides"]},
                "options": {"type": "object"},
            }}},
    },
}


def _series(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_the_dashboard_is_valid_for_its_schema_version() -> None:
    board = dashboard("checkout-pricing")
    assert board["schemaVersion"] == SCHEMA_VERSION == 36
    jsonschema.validate(board, GRAFANA_DASHBOARD_36)
    jsonschema.validate(dashboard(), GRAFANA_DASHBOARD_36)
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert board["templating"]["list"][1]["current"]["value"] == "checkout-pricing"


def test_every_query_names_a_series_metrics_exposes(metrics_text) -> None:
    exposed = _series(metrics_text)
    board = dashboard()
    queries = [t["expr"] for p in board["panels"] for t in p["targets"]]
    queries += [a["expr"] for a in board["annotations"]["list"]]
    queries += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    for query in queries:
        names = re.findall(r"\bcrossfade_[a-z_]+", query)
        assert names, query
        assert not set(names) - exposed, f"{query}: {set(names) - exposed} not in /metrics"
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for topic in ("traffic", "error rate", "latency", "cost", "gates", "rollbacks"):
        assert topic in titles


def test_the_command_writes_the_dashboard_and_refuses_a_bad_name(tmp_path) -> None:
    runner = CliRunner()
    target = tmp_path / "board.json"
    result = runner.invoke(app, ["grafana", "checkout-pricing", "--out", str(target)])
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text())["title"] == "crossfade: checkout-pricing"
    result = runner.invoke(app, ["grafana", "Checkout Pricing"])
    assert result.exit_code == 2 and "is not a migration name" in result.output
    result = runner.invoke(app, ["grafana", "--out", str(tmp_path / "missing" / "x.json")])
    assert result.exit_code == 2 and "cannot write" in result.output
