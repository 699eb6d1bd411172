"""The package's layers: imports only go down (errors/progress → study/store → tables → fhir → analysis/server → jobs → cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import fhir_msc

PACKAGE = Path(fhir_msc.__file__).parent
LAYER = {"errors": 0, "progress": 0, "account": 0, "study": 1, "store": 1, "tables": 2, "fhir": 3, "analysis": 4, "server": 4,
         "jobs": 5, "cli": 6,
         "__init__": 7}


def _area(module: Path) -> str:
    return module.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_areas(module: Path) -> set[str]:
    """The areas of fhir_msc that ``module`` imports, resolved from its relative imports."""
    depth = len(module.relative_to(PACKAGE).parts) - 1
    areas = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            up = node.level - 1
            if up < depth:  # within its own sub-package
                continue
            names = (node.module or "").split(".") if node.module else [alias.name for alias in node.names]
            areas.add(names[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fhir_msc."):
            areas.add(node.module.split(".")[1])
    return areas


def test_every_module_belongs_to_a_layer():
    assert {_area(m) for m in PACKAGE.rglob("*.py")} <= set(LAYER)


def test_imports_only_go_down():
    upward = [f"{m.relative_to(PACKAGE)} imports {area}"
              for m in PACKAGE.rglob("*.py") for area in _imported_areas(m)
              if area != _area(m) and LAYER[area] >= LAYER[_area(m)]]
    assert upward == []
