"""The server's life: port up before the model, 503 while loading, ready, engine death, exit.

Runs its own `nim-serve` process because it kills the engine.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import httpx
import psutil
import pytest

from tests.server.conftest import SERVED_NAME, chat_body, tiny_server_env
from tests.support.server_process import ServerProcess, start_server
from tests.support.tiny_model import build_tiny_model

# Long enough that a stream cannot finish between its first chunk and the engine's kill even on
# a loaded machine (the tiny model writes ~600 tokens/s on a quiet one; 4,000 once did finish).
LONG_CONTEXT = 32768


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama-long")
    return build_tiny_model(directory, max_position_embeddings=LONG_CONTEXT)


@pytest.fixture
def fresh_server(long_context_model: Path, tmp_path: Path) -> ServerProcess:
    env = tiny_server_env(long_context_model, tmp_path / "cache")
    env["NIM_MAX_MODEL_LEN"] = str(LONG_CONTEXT)
    proc = start_server(tmp_path, env)
    yield proc
    proc.stop()


def engine_core_processes(server: ServerProcess) -> list[psutil.Process]:
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [p for p in children if "EngineCore" in " ".join([*p.cmdline(), p.name()])]


def test_loading_then_ready_then_engine_death(fresh_server: ServerProcess) -> None:
    server = fresh_server
    # The port answers long before the model is loaded: live is 200 at once...
    live = server.wait_until("/v1/health/live", 200, timeout=60)
    assert live.json() == {
        "object": "health.response",
        "message": "Service is live.",
        "status": "alive",
    }
    # ...while readiness and inference say "not yet, retry" instead of refusing connections.
    ready = httpx.get(server.base_url + "/v1/health/ready")
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "engine_loading"
    assert (
        "loading" in ready.json()["error"]["message"]
        or "prepared" in ready.json()["error"]["message"]
    )
    chat = httpx.post(server.base_url + "/v1/chat/completions", json=chat_body())
    assert chat.status_code == 503
    assert int(chat.headers["retry-after"]) > 0
    assert chat.json()["error"]["code"] == "model_not_ready"
    assert httpx.get(server.base_url + "/v1/models").status_code == 503

    server.wait_until("/v1/health/ready", 200, timeout=300)
    ok = httpx.post(server.base_url + "/v1/chat/completions", json=chat_body(), timeout=60)
    assert ok.status_code == 200, ok.text
    assert ok.json()["model"] == SERVED_NAME

    # The engine process dies (OOM killer, GPU fault) in the middle of a stream: the stream
    # ends with an in-band error and [DONE]; readiness and liveness say so; new requests fail
    # with a clear 500 instead of hanging.
    (core,) = engine_core_processes(server)
    long_stream = chat_body(stream=True, max_tokens=LONG_CONTEXT - 100, ignore_eos=True)
    with httpx.stream(
        "POST", server.base_url + "/v1/chat/completions", json=long_stream, timeout=60
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        core.kill()
        payloads = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    core.wait(30)
    assert payloads[-1] == "[DONE]"
    assert "error" in json.loads(payloads[-2]), payloads[-3:]
    error = json.loads(payloads[-2])["error"]
    assert error["type"] == "internal_server_error"
    assert "engine" in error["message"]
    server.wait_until("/v1/health/ready", 503, timeout=60)
    dead = httpx.get(server.base_url + "/v1/health/ready").json()["error"]
    assert "died" in dead["message"]
    assert httpx.get(server.base_url + "/v1/health/live").status_code == 503
    failed = httpx.post(server.base_url + "/v1/chat/completions", json=chat_body(), timeout=30)
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "internal_server_error"


def test_sigterm_exits_cleanly_and_reaps_the_engine(fresh_server: ServerProcess) -> None:
    server = fresh_server
    server.wait_until("/v1/health/ready", 200, timeout=300)
    log = server.log()
    # The drain below runs on uvloop, the loop the server is built for (as vLLM's is).
    assert "(event loop: uvloop)" in log, log[-2000:]
    # The startup heap (torch, vLLM) is out of the garbage collector's full scans.
    frozen = re.search(r"(\d+) startup objects frozen", log)
    assert frozen is not None, log[-2000:]
    assert int(frozen.group(1)) > 100_000
    children = engine_core_processes(server)
    assert children
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(60) == 0
    _gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, alive


def test_model_load_failure_exits_nonzero(tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    env = {
        "NIM_MODEL_NAME": str(broken),
        "NIM_CACHE_PATH": str(tmp_path),
        "NIM_JSONL_LOGGING": "1",
    }
    server = start_server(tmp_path, env)
    try:
        code = server.process.wait(180)
    finally:
        server.stop()
    assert code == 3
    # Our own lines are JSON objects a log pipeline can parse (third-party progress bars that
    # write straight to the terminal are not log records and are not reformatted).
    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    failure = [r for r in records if r["message"] == "model failed to load"]
    assert failure, server.log()[-3000:]
    assert failure[0]["level"] == "ERROR"
    assert "config.json" in failure[0]["exception"] or "JSON" in failure[0]["exception"]
    assert {"time", "level", "logger", "message"} <= set(records[0])
