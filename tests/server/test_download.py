"""`nim-serve download`, offline: the embedded model, a local directory, and hub failures.

Nothing here reaches a model hub. The hub cases run `download.main` in-process with
huggingface_hub's `snapshot_download` replaced by a local fake (`fake_hub`) that writes files or
raises the errors the real hub client raises, so the exit codes and termination messages the
operator maps to NIMCache reasons are checked without a network.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import huggingface_hub
import pytest
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from nim_server import download
from nim_server.model_source import EMBEDDED_SERVED_NAME

NIM_SERVE = str(Path(sys.executable).with_name("nim-serve"))


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NIM_SERVE, "download", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def test_help_lists_the_options_and_exit_codes() -> None:
    done = run_cli("--help")
    assert done.returncode == 0, done.stderr
    for word in ("--model", "--dataset", "--revision", "--cache-path", "--termination-log"):
        assert word in done.stdout, word
    assert "11 model not" in done.stdout


def test_the_embedded_model_is_converted_into_the_cache(tmp_path: Path) -> None:
    cache, message = tmp_path / "cache", tmp_path / "termination-log"
    done = run_cli("--cache-path", str(cache), "--termination-log", str(message))
    assert done.returncode == 0, done.stderr
    result = json.loads(message.read_text())
    assert result["servedName"] == EMBEDDED_SERVED_NAME
    assert result["path"].startswith("converted/SmolLM2-135M-Instruct")
    model = cache / result["path"]
    assert (model / "model.safetensors").is_file()
    assert (model / "config.json").is_file()
    assert result["sizeBytes"] > 50_000_000
    assert json.loads((cache / download.MANIFEST).read_text()) == result
    assert json.loads(done.stdout) == result
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf" in done.stderr  # progress in the log


def test_a_local_directory_is_copied_into_the_cache(tmp_path: Path) -> None:
    source = tmp_path / "my-model"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "sub" / "weights.bin").write_bytes(b"x" * 1000)
    cache, message = tmp_path / "cache", tmp_path / "termination-log"
    args = ("--model", str(source), "--cache-path", str(cache), "--termination-log", str(message))
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    result = json.loads(message.read_text())
    assert result == {
        "model": str(source),
        "servedName": "my-model",
        "path": "models/my-model",
        "sizeBytes": 1002,
    }
    assert (cache / "models" / "my-model" / "sub" / "weights.bin").read_bytes() == b"x" * 1000
    assert not list((cache / "models").glob(".copying-*"))


def test_a_missing_local_file_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "not-a-model.txt").write_text("")
    message = tmp_path / "termination-log"
    code = download.main(
        [
            *("--model", str(tmp_path / "not-a-model.txt")),
            *("--cache-path", str(tmp_path / "cache"), "--termination-log", str(message)),
        ]
    )
    assert code == download.EXIT_NOT_FOUND
    assert json.loads(message.read_text())["reason"] == "ModelNotFound"


# --- the hub, behind a local fake -----------------------------------------------------------------


def _hub_response(status: int) -> httpx2.Response:
    # huggingface_hub's errors carry the response of its own HTTP client (httpx2).
    request = httpx2.Request("GET", "https://hub.invalid/api/models/org/name")
    return httpx2.Response(status, request=request)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A stand-in for huggingface_hub.snapshot_download: no network, behaviour per test."""
    state: dict[str, Any] = {"raise": None, "calls": []}

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        state["calls"].append((repo_id, kwargs))
        if state["raise"] is not None:
            raise state["raise"]
        target = Path(kwargs["local_dir"])
        target.mkdir(parents=True, exist_ok=True)
        (target / "config.json").write_text('{"model_type": "llama"}')
        (target / "model.safetensors").write_bytes(b"\0" * 4096)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return state


def _run_hub(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    message = tmp_path / "termination-log"
    code = download.main(
        [
            *("--model", "org/name", *extra),
            *("--cache-path", str(tmp_path / "cache"), "--termination-log", str(message)),
        ]
    )
    return code, json.loads(message.read_text())


def test_a_hub_model_lands_under_models(tmp_path: Path, fake_hub: dict[str, Any]) -> None:
    code, result = _run_hub(tmp_path, "--revision", "v1")
    assert code == download.EXIT_OK
    assert result == {
        "model": "org/name",
        "servedName": "org/name",
        "path": "models/org--name",
        "sizeBytes": 4096 + len('{"model_type": "llama"}'),
    }
    ((repo_id, kwargs),) = fake_hub["calls"]
    assert repo_id == "org/name"
    assert kwargs["revision"] == "v1"


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (lambda: GatedRepoError("gated", response=_hub_response(403)), 10, "AuthFailed"),
        (lambda: RepositoryNotFoundError("nope", response=_hub_response(404)), 11, "ModelNotFound"),
        (
            lambda: huggingface_hub.errors.HfHubHTTPError("no", response=_hub_response(401)),
            10,
            "AuthFailed",
        ),
        (lambda: OSError(28, "No space left on device"), 12, "DiskFull"),
        (lambda: ConnectionError("reset"), 13, "DownloadFailed"),
    ],
)
def test_hub_failures_exit_with_their_cause(
    tmp_path: Path, fake_hub: dict[str, Any], error: Any, code: int, reason: str
) -> None:
    fake_hub["raise"] = error()
    exit_code, result = _run_hub(tmp_path)
    assert (exit_code, result["reason"]) == (code, reason)
    assert result["message"]


# --- datasets (a NIMCache's datasetName) --------------------------------------------------------


def test_a_hub_dataset_lands_under_datasets(tmp_path: Path, fake_hub: dict[str, Any]) -> None:
    message = tmp_path / "termination-log"
    cache = tmp_path / "cache"
    code = download.main(
        [
            *("--dataset", "rajpurkar/squad", "--revision", "v2"),
            *("--cache-path", str(cache), "--termination-log", str(message)),
        ]
    )
    assert code == download.EXIT_OK
    result = json.loads(message.read_text())
    assert result == {
        "dataset": "rajpurkar/squad",
        "path": "datasets/rajpurkar--squad",
        "sizeBytes": 4096 + len('{"model_type": "llama"}'),
    }
    ((repo_id, kwargs),) = fake_hub["calls"]
    assert (repo_id, kwargs["repo_type"], kwargs["revision"]) == (
        "rajpurkar/squad",
        "dataset",
        "v2",
    )
    assert json.loads((cache / download.MANIFEST).read_text()) == result


def test_a_missing_dataset_is_not_found(tmp_path: Path, fake_hub: dict[str, Any]) -> None:
    fake_hub["raise"] = RepositoryNotFoundError("nope", response=_hub_response(404))
    message = tmp_path / "termination-log"
    code = download.main(
        ["--dataset", "org/none", "--cache-path", str(tmp_path), "--termination-log", str(message)]
    )
    result = json.loads(message.read_text())
    assert (code, result["reason"]) == (download.EXIT_NOT_FOUND, "ModelNotFound")
    assert result["message"].startswith("dataset org/none not found")


def test_a_dataset_is_never_a_local_path(tmp_path: Path, fake_hub: dict[str, Any]) -> None:
    message = tmp_path / "termination-log"
    code = download.main(
        ["--dataset", "/etc", "--cache-path", str(tmp_path), "--termination-log", str(message)]
    )
    assert code == download.EXIT_NOT_FOUND
    assert "not a hub dataset id" in json.loads(message.read_text())["message"]
    assert fake_hub["calls"] == []


def test_hub_models_are_fetched_as_models(tmp_path: Path, fake_hub: dict[str, Any]) -> None:
    _run_hub(tmp_path)
    ((_, kwargs),) = fake_hub["calls"]
    assert kwargs["repo_type"] == "model"
