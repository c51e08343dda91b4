"""An item store over a directory: each file under it is an item, keyed by its path relative to the root."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from crossfade.atomic import replace_file
from crossfade.registry import ConfigProblem, ProviderConfigError


class FileStore:
    """The files under `root` matching `pattern` (a glob, `**` for any depth); writes replace atomically."""

    def __init__(self, root: str | os.PathLike[str], pattern: str = "**/*") -> None:
        self.root = Path(root)
        self.pattern = pattern

    def _path(self, key: str) -> Path:
        relative = PurePosixPath(key)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"item key {key!r} leaves the directory {self.root}")
        return self.root.joinpath(*relative.parts)

    def keys(self) -> Iterator[str]:
        """The relative paths (with /) of the matching files, sorted."""
        found = (p for p in self.root.glob(self.pattern) if p.is_file() and not p.name.startswith(".crossfade-"))
        return iter(sorted(p.relative_to(self.root).as_posix() for p in found))

    def read(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The bytes of each file that exists."""
        found = {}
        for key in keys:
            try:
                found[key] = self._path(key).read_bytes()
            except FileNotFoundError:
                continue
        return found

    def write(self, items: Mapping[str, bytes | None]) -> None:
        """Replace each file through a temporary file and a rename, so a reader never sees half a file;
        None removes it."""
        for key, data in items.items():
            path = self._path(key)
            if data is None:
                path.unlink(missing_ok=True)
                continue
            replace_file(path, data)


def create(config: dict[str, Any], path: str) -> FileStore:
    """A directory store: `root` (an existing directory) and `pattern` (default `**/*`)."""
    problems = [ConfigProblem(f"{path}.{k}", "unknown setting; the files store takes: root, pattern")
                for k in sorted(set(config) - {"root", "pattern"})]
    root = config.get("root")
    if not isinstance(root, str | os.PathLike) or not Path(root).is_dir():
        problems.append(ConfigProblem(f"{path}.root", f"must name an existing directory, got {root!r}"))
    pattern = config.get("pattern", "**/*")
    if not isinstance(pattern, str) or not pattern:
        problems.append(ConfigProblem(f"{path}.pattern", f"must be a glob such as **/*.json, got {pattern!r}"))
    if problems:
        raise ProviderConfigError(problems)
    return FileStore(str(root), pattern)
