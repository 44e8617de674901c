"""Imports flow one way (DESIGN.md, "Layout"): formats/ is a leaf; world/ imports formats but never
pipelines/ or the app; pipelines/ never imports world/ or the app; kernels/ imports neither."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {  # package → the top-level packages it must not import
    "formats": {"world", "pipelines", "app", "attention_processors", "kernels", "qnerf", "training", "benchmarks"},
    "world": {"pipelines", "app", "training", "benchmarks"},
    "pipelines": {"world", "app", "training", "benchmarks"},
    "attention_processors": {"pipelines", "world", "app"},
    "kernels": {"attention_processors", "pipelines", "world", "app"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package):
    offenders = {str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN[package])
                 for path in (ROOT / package).rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}, offenders
