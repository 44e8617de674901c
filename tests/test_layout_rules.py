"""Imports flow one way (DESIGN.md, "Layout"): formats/ is a leaf; world/ imports formats but never
pipelines/ or the app; pipelines/ never imports world/ or the app; kernels/ imports neither; qnerf/
(built on nerfstudio) imports only formats/. Three exceptions, by issues 22, 23 and 24: the batch
runner's --from-seeds and the driving and multi-view CLIs' --seed / --scene-seed sample the toy world."""

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
    "qnerf": {"pipelines", "world", "app", "attention_processors", "kernels", "training", "benchmarks"},
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


ALLOWED = {("pipelines/batch.py", "world"), ("pipelines/driving_video/cli.py", "world"),
           ("pipelines/multiview_edit/cli.py", "world")}  # --from-seeds, --seed


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package):
    offenders = {}
    for path in (ROOT / package).rglob("*.py"):
        name = str(path.relative_to(ROOT))
        offenders[name] = sorted(m for m in _imports(path) & FORBIDDEN[package] if (name, m) not in ALLOWED)
    assert not {k: v for k, v in offenders.items() if v}, offenders
