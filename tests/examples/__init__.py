"""The examples under examples/, run as their READMEs say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).parents[2] / "examples"


def load_example(folder: str, name: str) -> ModuleType:
    """Import `examples/FOLDER/NAME.py` as a module (example folders are not packages: their names have dashes)."""
    spec = importlib.util.spec_from_file_location(f"example_{folder.replace('-', '_')}_{name}",
                                                  EXAMPLES / folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
