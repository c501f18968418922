"""Outside the task modules no source file of the package names a task kind in a string or branches on one: the
generic machinery loops over the enabled tasks (fourm21/tasks/) and a new kind touches no other file.

Checked on the source (every string constant and f-string part, docstrings left out): a string that is a kind
(``"det"``) or starts with one and a separator (``"det/map"``, ``"attr."``) may appear only in fourm21/tasks/ and
in the head modules those tasks point to (fourm21/models/heads/)."""

import ast
import re
from pathlib import Path

from fourm21.tasks import registered

PACKAGE = Path(__file__).resolve().parents[2] / "fourm21"
ALLOWED_DIRS = ("tasks", "models/heads")
BUILT_IN = ("cls", "det", "inst", "sem", "attr", "mlc")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def kind_strings(source: str, kinds: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line, string) of every string constant of ``source`` that names one of ``kinds``."""
    pattern = re.compile(rf"^({'|'.join(map(re.escape, kinds))})([./]|$)")
    tree = ast.parse(source)
    skip = _docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and pattern.match(node.value)]


def test_the_check_finds_a_kind_in_code_and_not_in_a_docstring():
    source = '"""Heads such as det."""\nif "det" in outputs:\n    key = f"attr.{g}/acc"\nname = "detector"\n'
    assert kind_strings(source, BUILT_IN) == [(2, "det"), (3, "attr.")]


def test_no_file_outside_the_tasks_names_a_kind():
    kinds = tuple(sorted(set(BUILT_IN) | set(registered())))
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(ALLOWED_DIRS):
            continue
        found += [f"{rel}:{line}: {text!r}" for line, text in kind_strings(path.read_text(), kinds)]
    assert not found, "task kinds named outside fourm21/tasks/:\n" + "\n".join(found)
