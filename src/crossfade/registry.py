"""Providers found by name: one module per provider in a folder named for its interface.

A router, a metric source, a notification channel, a comparator or a converter is one module in its
folder (`crossfade/routers/istio.py`, `crossfade/notify/slack.py`, ...). The folder's registry lists the
modules there without importing them, so `import crossfade` stays light, and imports one only when a spec
or a command names it. Each provider module defines `create(config, path)`: it checks its own part of the
spec (raising `ProviderConfigError` with every problem, each with its path) and returns the provider.
Adding a provider is adding its file: nothing else names it.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a provider's configuration: where (a spec path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ProviderConfigError(ValueError):
    """A provider's configuration is not valid; carries every problem found, each with its spec path."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class Registry(Generic[P]):
    """The providers of one interface, keyed by the name a spec uses for them (the module's name)."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package

    def names(self) -> list[str]:
        """Every provider's name, found by listing the folder (nothing is imported)."""
        module = importlib.import_module(self.package)
        return sorted(
            info.name for info in pkgutil.iter_modules(module.__path__) if not info.name.startswith("_")
        )

    def create(self, name: str, config: Mapping[str, Any] | None, path: str) -> P:
        """The provider `name` built from its configuration; problems raise `ProviderConfigError`."""
        known = self.names()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ProviderConfigError(
                [ConfigProblem(path, f"unknown {self.kind} {name!r}{hint}; known: {', '.join(known) or 'none'}")]
            )
        module = importlib.import_module(f"{self.package}.{name}")
        return module.create(dict(config or {}), path)
