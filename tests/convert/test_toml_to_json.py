"""TOML -> JSON on the corpus: dates, arrays of tables, unicode and nesting survive the way there and back."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from crossfade.convert import converter

CORPUS = Path(__file__).with_name("corpus")


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.toml")), ids=lambda p: p.name)
def test_the_corpus_round_trips_with_no_loss(path):
    source = path.read_bytes()
    result = converter("toml-to-json").convert(source)
    assert result.losses == ()
    back = converter("json-to-toml").convert(result.output)
    assert back.lossless
    assert tomllib.loads(back.output.decode()) == tomllib.loads(source.decode())


def test_dates_are_written_as_their_toml_text():
    result = converter("toml-to-json", {"indent": 0}).convert(b"a = 2025-06-01T08:00:00Z\nb = 07:30:00\n")
    assert json.loads(result.output) == {"a": "2025-06-01T08:00:00Z", "b": "07:30:00"}


def test_a_json_output_missing_values_is_reported():
    losses = converter("toml-to-json").validate(b'a = 1\n[t]\nb = "x"\n', b'{"a": 2, "t": {}}')
    assert [(loss.path, loss.message) for loss in losses] == [("$.a", "1 became 2"), ("$.t.b", "missing (was 'x')")]


def test_not_toml_is_one_clear_error():
    with pytest.raises(ValueError, match="not TOML"):
        converter("toml-to-json").convert(b"a = = 1")
