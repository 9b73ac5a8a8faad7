"""Server test fixtures: a tiny Llama built locally and the real `nim-serve` serving it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server_process import ServerProcess, ready_server
from tests.support.tiny_model import build_tiny_model

API_KEY = "test-key-123"
# Long enough that a full-length generation takes seconds on CPU (so an abort is visible in
# the token counters), short enough that context-length errors are cheap to provoke.
TINY_MAX_MODEL_LEN = 4096
SERVED_NAME = "meta/tiny-llama-instruct"  # slash on purpose: NIM ids look like this


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-llama"), max_position_embeddings=TINY_MAX_MODEL_LEN
    )


def tiny_server_env(model_dir: Path, cache: Path) -> dict[str, str]:
    return {
        "NIM_MODEL_NAME": str(model_dir),
        "NIM_SERVED_MODEL_NAME": SERVED_NAME,
        "NIM_MAX_MODEL_LEN": str(TINY_MAX_MODEL_LEN),
        "NIM_CACHE_PATH": str(cache),
        "NIM_KV_CACHE_BYTES": "64MiB",
    }


@pytest.fixture(scope="session")
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One real server for the session, with bearer auth on so every test exercises it."""
    work = tmp_path_factory.mktemp("server")
    env = tiny_server_env(tiny_model_dir, work / "cache")
    with ready_server(work, env, api_key=API_KEY) as proc:
        yield proc


@pytest.fixture(scope="session")
def auto_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server with auto tool choice and vLLM's pythonic parser (the random model's text is
    then a call only when a grammar makes it one), shared by the tool and agent tests."""
    work = tmp_path_factory.mktemp("auto-tools")
    env = {
        **tiny_server_env(tiny_model_dir, work / "cache"),
        "NIM_ENABLE_AUTO_TOOL_CHOICE": "1",
        "NIM_TOOL_CALL_PARSER": "pythonic",
    }
    with ready_server(work, env) as proc:
        yield proc


@pytest.fixture(scope="session")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def oai(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="session")
def async_oai(server: ServerProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0)


def chat_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    body.update(overrides)
    return body


@pytest.fixture(scope="session")
def server_url(server: ServerProcess) -> str:
    return server.base_url
