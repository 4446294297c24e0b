"""Production code is only production code, and the training loop reads top to bottom."""
from __future__ import annotations

import ast
import re

from tests.conftest import REPO


def test_no_fault_injection_hook_is_read_from_the_environment():
    """Faults are injected by the tests (tests/faults.py), never by variables the package reads."""
    hooks = []
    for path in sorted([*(REPO / "mt_dnn").rglob("*.py"), *(REPO / "data_utils").rglob("*.py")]):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for name in re.findall(r"MT_DNN_[A-Z_]+", line):
                if name != "MT_DNN_NO_TQDM":  # a user's setting (no progress bars), not a fault
                    hooks.append(f"{path.relative_to(REPO)}:{n}: {name}")
    assert hooks == []


def test_the_training_loop_has_no_else_break_or_continue():
    tree = ast.parse((REPO / "mt_dnn" / "trainer.py").read_text(encoding="utf-8"))
    found = [f"line {node.lineno}: {type(node).__name__}" for node in ast.walk(tree)
             if isinstance(node, (ast.Break, ast.Continue))
             or (isinstance(node, (ast.For, ast.While)) and node.orelse)]
    assert found == []
