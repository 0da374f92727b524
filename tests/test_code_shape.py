"""The product code keeps the shape docs/architecture.md promises: small modules, short functions, no copies.

No module over 400 lines in app/ or worker/, no function over 60 lines, and no run of six or more
lines (blank lines, comments, imports and lone brackets aside) written twice.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = sorted(p for folder in ("app", "worker") for p in (ROOT / folder).rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
RUN = 6
THIN = re.compile(r"^[\s()\[\]{},:]*$")


def test_product_code_was_found() -> None:
    assert len(PRODUCT) > 30


def test_no_module_is_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in PRODUCT if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_is_over_60_lines() -> None:
    long: dict[str, int] = {}
    for path in PRODUCT:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = length
    assert long == {}


def meaningful_lines(path: Path) -> list[tuple[int, str]]:
    lines = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = " ".join(raw.split())
        if not line or line.startswith(("#", "import ", "from ")) or THIN.match(line):
            continue
        lines.append((number, line))
    return lines


def test_no_run_of_six_lines_is_written_twice() -> None:
    places: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for path in PRODUCT:
        lines = meaningful_lines(path)
        for i in range(len(lines) - RUN + 1):
            run = tuple(text for _, text in lines[i : i + RUN])
            places[run].append(f"{path.relative_to(ROOT)}:{lines[i][0]}")
    repeated = {"\n".join(run): where for run, where in places.items() if len(where) > 1}
    assert repeated == {}
