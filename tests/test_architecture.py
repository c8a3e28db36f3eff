"""The layering rule: segflow/ is the library and never imports the orchestrator."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_segflow_library_never_imports_prefect():
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "segflow").rglob("*.py")
        if any(name == "prefect" or name.startswith("prefect.") for name in _imported_modules(path))
    ]
    assert offenders == []
