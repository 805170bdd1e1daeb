"""House rules that the code itself can check: no method of the hardware longer than ~150 lines
(split a block into parts or sub-components), and the hardware never imports the harness."""

import ast
from pathlib import Path

import pytest

HW = Path(__file__).resolve().parent.parent / "hw"
LIMIT = 150


def _functions(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("path", sorted(HW.glob("*.py")), ids=lambda p: p.name)
def test_no_hardware_function_is_longer_than_the_limit(path):
    long = [(name, line, n) for name, line, n in _functions(path) if n > LIMIT]
    assert not long, "{}: split these (name, line, lines): {}".format(path.name, long)


@pytest.mark.parametrize("path", sorted(HW.glob("*.py")), ids=lambda p: p.name)
def test_hardware_does_not_import_the_harness(path):
    tree = ast.parse(path.read_text())
    bad = [n.lineno for n in ast.walk(tree)
           if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "sim"
           or isinstance(n, ast.Import) and any(a.name.split(".")[0] == "sim" for a in n.names)]
    assert not bad, "{} imports sim/ at lines {}".format(path.name, bad)
