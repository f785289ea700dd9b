"""The package's source as the structure tests read it: its modules and what each imports."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "xrec_spark"


def module_imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (``import a.b`` -> ``a.b``, ``from a import b`` -> ``a``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names
