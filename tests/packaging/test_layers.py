"""Layers import downwards only: data -> models -> losses / metrics -> tasks -> inference -> training / export /
serve (side by side, no edge between them) -> engine (the Hydra entry points) -> hub -> api.

A lower layer never imports a higher one, not even inside a function (checked on the source, every import)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "fourm21"
LAYER = {"errors": 0, "data": 1, "models": 2, "losses": 3, "metrics": 3, "tasks": 4, "inference": 5,
         "training": 6, "export": 6, "serve": 6, "engine": 7, "hub": 8, "api": 9, "__init__": 9, "configs": 0}
# no exception: heads only map features to raw outputs; each task (tasks/) assembles its loss, decoder and
# metrics from the layers below, and the generic machinery above loops over the tasks
ALLOWED: set[tuple[str, str]] = set()


def _layer_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return [m for m in found if m == "fourm21" or m.startswith("fourm21.")]


def test_no_module_imports_a_higher_layer():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        here = _layer_of(".".join(rel.parts))
        for target in _imports(path):
            there = _layer_of(target) if target != "fourm21" else "__init__"
            if (LAYER[there] > LAYER[here] or (LAYER[there] == LAYER[here] == 6 and there != here)) \
                    and (here, there) not in ALLOWED:
                wrong.append(f"{rel}: imports {target} ({here} -> {there})")
    assert not wrong, "\n".join(wrong)
