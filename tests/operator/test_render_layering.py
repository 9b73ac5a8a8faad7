"""render/, models.py and the autoscaler's algorithm stay pure: no kopf, no client, no I/O.

Reconcile can then call them anywhere (tests, dry runs) and they cannot reach the network.

Each module is imported in a fresh interpreter and everything the import pulled in is checked,
so an indirect import through a helper module counts too. (A fresh process also keeps this test
away from `ast` in the test process: CPython 3.11's AST conversion is not thread-safe, and other
tests' background threads format tracebacks with it.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

OPERATOR_ROOT = Path(__file__).parents[2] / "operator"
PACKAGE = OPERATOR_ROOT / "nim_operator"
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
# The algorithm's package __init__ is loaded with it, and must itself stay empty of runtime.
ALLOWED_EXACT = {"nim_operator.autoscaling", "nim_operator.autoscaling.algorithm"}

LIST_IMPORTS = """
import json, sys
before = set(sys.modules)
__import__(sys.argv[1])
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def module_name(path: Path) -> str:
    parts = path.relative_to(OPERATOR_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def imported_modules(path: Path) -> frozenset[str]:
    """Every module that importing ``path`` loads into a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", LIST_IMPORTS, module_name(path)],
        env={"PYTHONPATH": str(OPERATOR_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return frozenset(json.loads(result.stdout))


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
class TestPureLayer:
    def test_no_framework_or_client_imports(self, path: Path) -> None:
        bad = {m for m in imported_modules(path) if m.split(".")[0] in FORBIDDEN}
        assert bad == set()

    def test_no_imports_from_the_runtime_side(self, path: Path) -> None:
        internal = {m for m in imported_modules(path) if m.startswith("nim_operator.")}
        assert module_name(path) in internal | {"nim_operator.render"}
        stray = {
            m for m in internal if m not in ALLOWED_EXACT and not m.startswith(ALLOWED_INTERNAL)
        }
        assert stray == set()
