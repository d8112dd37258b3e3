"""The project's size rules, checked on every module in src/: functions under 80
lines, modules under 450 lines. ``python tests/test_code_size.py`` lists every offender."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "radsearch"
MAX_FUNCTION = 80
MAX_MODULE = 450


def oversized(root: Path = SRC) -> list[str]:
    """``path:line name (n lines)`` for every function and module over the limits."""
    out = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(root.parent)
        n = len(text.splitlines())
        if n > MAX_MODULE:
            out.append(f"{rel} (module, {n} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION:
                    out.append(f"{rel}:{node.lineno} {node.name} ({size} lines)")
    return out


def test_no_function_or_module_over_the_limits():
    assert oversized() == []


if __name__ == "__main__":
    print("\n".join(oversized()) or "all within limits")
