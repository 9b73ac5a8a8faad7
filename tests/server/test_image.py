"""The inference images run the command the tests run, as a non-root user, on port 8000."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "inference_image" / "Dockerfile", ROOT / "inference_image" / "Dockerfile.cpu"]


def instructions(dockerfile: Path, keyword: str) -> list[str]:
    return [
        line.split(None, 1)[1].strip()
        for line in dockerfile.read_text().splitlines()
        if line.startswith(keyword + " ")
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_is_the_tested_console_script(dockerfile: Path) -> None:
    (entrypoint,) = instructions(dockerfile, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["nim-serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["nim-serve"] == "nim_server.cli:main"
    # The tests start exactly this script (tests/support/server_process.py).
    assert Path(sys.executable).with_name("nim-serve").exists()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_non_root_and_exposes_8000(dockerfile: Path) -> None:
    (user,) = instructions(dockerfile, "USER")
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), user  # numeric, not root
    assert instructions(dockerfile, "EXPOSE") == ["8000"]


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run(
        [hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {".git", ".venv"} <= set(ignored)
