"""JSON -> TOML on a corpus of real-shaped configs: nothing lost on the way there and back; losses reported."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from crossfade.convert import DATA, ORDER, converter
from crossfade.registry import ProviderConfigError

CORPUS = Path(__file__).with_name("corpus")
JSON_FILES = sorted(CORPUS.glob("*.json"))


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: p.name)
def test_the_corpus_round_trips_with_no_loss(path):
    source = path.read_bytes()
    result = converter("json-to-toml").convert(source)
    assert [loss for loss in result.losses if loss.kind == DATA] == []
    back = converter("toml-to-json").convert(result.output)
    assert back.losses == ()
    # Values and key order are the original's, except that TOML writes plain values before sub-tables.
    original, returned = json.loads(source), json.loads(back.output)
    assert returned == original
    reordered = {loss.path for loss in result.losses if loss.kind == ORDER}
    for where in reordered:
        assert where.startswith("$")


def test_order_is_kept_where_toml_allows_it():
    source = b'{"z": 1, "a": "x", "m": [3, 1], "table": {"y": 2, "b": 1}, "later": {"q": true}}'
    result = converter("json-to-toml").convert(source)
    assert result.losses == ()
    assert list(tomllib.loads(result.output.decode())) == ["z", "a", "m", "table", "later"]
    assert list(tomllib.loads(result.output.decode())["table"]) == ["y", "b"]


def test_date_strings_become_toml_dates_only_when_they_come_back_identical():
    source = ('{"day": "2025-01-02", "at": "2025-01-02T03:04:05Z", "odd": "2025-01-02T03:04:05.250+02:00", '
              '"note": "2025"}')
    result = converter("json-to-toml").convert(source.encode())
    parsed = tomllib.loads(result.output.decode())
    assert type(parsed["day"]).__name__ == "date" and type(parsed["at"]).__name__ == "datetime"
    assert parsed["odd"] == "2025-01-02T03:04:05.250+02:00" and parsed["note"] == "2025"
    assert result.losses == ()


def test_every_loss_is_reported_with_its_path():
    source = b'{"a": null, "list": [1, null, 2], "huge": 18446744073709551616, "fooBar": 1, "foo_bar": 2, "ok": 1}'
    result = converter("json-to-toml", {"snake_case": True}).convert(source)
    lost = {(loss.path, loss.kind) for loss in result.losses}
    assert ("$.a", DATA) in lost and ("$.list[1]", DATA) in lost and ("$.huge", DATA) in lost
    assert ("$.foo_bar", DATA) in lost  # collides with fooBar renamed
    assert ("$.fooBar", "note") in lost
    assert not result.lossless
    validated = converter("json-to-toml").validate(source, b"ok = 1\n")
    assert {loss.path for loss in validated} >= {"$.a", "$.fooBar", "$.huge"}


def test_camel_case_keys_become_snake_case_on_request():
    source = b'{"mcpServers": {"maxTokens": 1, "HTTPProxy": "x"}}'
    result = converter("json-to-toml", {"snake_case": True}).convert(source)
    assert tomllib.loads(result.output.decode()) == {"mcp_servers": {"max_tokens": 1, "http_proxy": "x"}}
    assert result.lossless


def test_bad_input_and_settings_are_one_clear_error():
    with pytest.raises(ValueError, match="must be an object, not list"):
        converter("json-to-toml").convert(b"[1]")
    with pytest.raises(ValueError, match="not JSON"):
        converter("json-to-toml").convert(b"{")
    with pytest.raises(ProviderConfigError, match="convert.json-to-toml.snake: unknown setting"):
        converter("json-to-toml", {"snake": True})
