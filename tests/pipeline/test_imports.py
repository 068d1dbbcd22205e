"""Arrows point down: the pipeline imports none of the packages built on it (the `paris`
command wires them together)."""

import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
ABOVE = {"weights", "server", "client", "tests"}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_pipeline_imports_nothing_built_on_it():
    files = sorted(PIPELINE.rglob("*.py"))
    assert len(files) > 10
    offenders = {str(f.relative_to(PIPELINE)): sorted(imported_packages(f) & ABOVE) for f in files}
    assert {f: names for f, names in offenders.items() if names} == {}
