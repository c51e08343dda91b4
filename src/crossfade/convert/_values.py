"""What JSON and TOML values have in common, and where they differ: dates, nulls, 64-bit integers, keys."""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any, Final

from crossfade.convert import DATA, ORDER, Loss

INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1
_CAMEL: Final = re.compile(r"(?<=[a-z0-9])([A-Z])|(?<=[A-Z])([A-Z])(?=[a-z])")
_DATE_LIKE: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})?)?$"  # date, date-time
    r"|^\d{2}:\d{2}:\d{2}(\.\d+)?$"  # local time
)


def snake_case(name: str) -> str:
    """`camelCase` and `PascalCase` as `snake_case` (`mcpServers` -> `mcp_servers`, `HTTPProxy` -> `http_proxy`)."""
    return _CAMEL.sub(lambda m: "_" + (m.group(1) or m.group(2)), name).lower()


def render_date(value: dt.date | dt.time) -> str:
    """A TOML date, time or datetime as the text TOML writes it (UTC as `Z`)."""
    text = value.isoformat()
    if isinstance(value, dt.datetime) and value.utcoffset() == dt.timedelta(0):
        text = text.removesuffix("+00:00") + "Z"
    return text


def as_date(text: str) -> dt.date | dt.time | None:
    """The TOML date, time or datetime a JSON string spells, when converting it back gives the same string."""
    if not _DATE_LIKE.match(text):
        return None
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return None
    return value if isinstance(value, dt.date | dt.time) and render_date(value) == text else None


def to_json_value(value: Any) -> Any:
    """A value read from TOML as JSON would hold it (dates and times as their TOML text)."""
    if isinstance(value, Mapping):
        return {k: to_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json_value(v) for v in value]
    if isinstance(value, dt.date | dt.time):
        return render_date(value)
    return value


def differences(expected: Any, got: Any, path: str = "$") -> Iterator[Loss]:
    """Every place where `got` is not `expected`: missing and extra keys, changed values, reordered keys."""
    if isinstance(expected, Mapping) and isinstance(got, Mapping):
        for key, value in expected.items():
            where = f"{path}.{key}"
            if key not in got:
                yield Loss(where, f"missing (was {_show(value)})")
            else:
                yield from differences(value, got[key], where)
        for key in got:
            if key not in expected:
                yield Loss(f"{path}.{key}", f"not in the source (is {_show(got[key])})")
        shared = [k for k in expected if k in got]
        if shared != [k for k in got if k in expected]:
            yield Loss(path, "keys in another order: " + ", ".join(k for k in got if k in expected), ORDER)
        return
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            yield Loss(path, f"{len(expected)} elements became {len(got)}")
        for index, (a, b) in enumerate(zip(expected, got, strict=False)):
            yield from differences(a, b, f"{path}[{index}]")
        return
    if type(expected) is not type(got) or expected != got:
        yield Loss(path, f"{_show(expected)} became {_show(got)}", DATA)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
