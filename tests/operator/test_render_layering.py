"""render/, models.py and the autoscaler's algorithm stay pure: no kopf, no client, no I/O.

Reconcile can then call them anywhere (tests, dry runs) and they cannot reach the network.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "operator" / "nim_operator"
PURE_MODULES = sorted(
    [
        PACKAGE / "models.py",
        *(PACKAGE / "render").glob("*.py"),
        # The autoscaler's decision: the benchmark in bench/ runs it without a cluster.
        PACKAGE / "autoscaling" / "algorithm.py",
    ]
)
FORBIDDEN = ("kopf", "kubernetes", "fastapi", "starlette", "aiohttp", "httpx", "requests")
# Inside the package, the pure layer may only use itself and the API constants.
ALLOWED_INTERNAL = ("nim_operator.models", "nim_operator.render")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
class TestPureLayer:
    def test_no_framework_or_client_imports(self, path: Path) -> None:
        bad = {m for m in imported_modules(path) if m.split(".")[0] in FORBIDDEN}
        assert bad == set()

    def test_no_imports_from_the_runtime_side(self, path: Path) -> None:
        internal = {m for m in imported_modules(path) if m.startswith("nim_operator")}
        stray = {m for m in internal if m != "nim_operator" and not m.startswith(ALLOWED_INTERNAL)}
        assert stray == set()
