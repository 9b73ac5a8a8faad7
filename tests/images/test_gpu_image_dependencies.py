"""The GPU image's `pip install ".[gpu]"` resolves from PyPI alone (no build of the image here).

There is no GPU and no CUDA base image on this machine, so inference_image/Dockerfile is only
linted; this checks the one step that could break without anyone noticing: the pinned GPU stack
(vLLM's CUDA build and the torch it requires) still resolves, with no local wheel involved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.images

ROOT = Path(__file__).resolve().parents[2]


def pypi_unreachable() -> str | None:
    try:
        httpx.head("https://pypi.org/simple/vllm/", timeout=10)
    except httpx.HTTPError as error:
        return f"PyPI is not reachable: {error}"
    return None


def test_gpu_extra_resolves_to_the_cuda_stack(tmp_path: Path) -> None:
    reason = pypi_unreachable()
    if reason is not None:
        pytest.skip(reason)
    # As in a Docker build: no pip configuration of this machine (its local wheels and caps).
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    environment["PIP_CONFIG_FILE"] = os.devnull
    if Path("/etc/ssl/certs/ca-certificates.crt").exists():
        environment["PIP_CERT"] = "/etc/ssl/certs/ca-certificates.crt"
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            f"{ROOT}[gpu]",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    resolved = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert resolved["vllm"] == "0.32.0"
    assert "+cpu" not in resolved["torch"]
    assert any(name.startswith("nvidia-") for name in resolved), sorted(resolved)
