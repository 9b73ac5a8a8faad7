"""NIM's engine settings reach vLLM: NIM_PASSTHROUGH_ARGS and NIM_ENABLE_KV_CACHE_REUSE."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.server.conftest import chat_body, tiny_server_env
from tests.support.server_process import start_server


def test_passthrough_args_and_kv_cache_reuse_reach_the_engine(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {
        **tiny_server_env(tiny_model_dir, tmp_path / "cache"),
        "NIM_PASSTHROUGH_ARGS": "--max-num-seqs 3",
        "NIM_ENABLE_KV_CACHE_REUSE": "false",
    }
    server = start_server(tmp_path, env)
    try:
        server.wait_until("/v1/health/ready", 200, timeout=300)
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            metrics = http.get("/v1/metrics").text
            limit = re.search(r"^num_request_max(?:\{[^}]*\})? (\S+)$", metrics, re.MULTILINE)
            assert limit is not None, metrics[:2000]
            assert float(limit.group(1)) == 3  # the engine runs 3 sequences at once
            long_prompt = "The capital of France is Paris. " * 40
            body = chat_body(messages=[{"role": "user", "content": long_prompt}], max_tokens=2)
            http.post("/v1/chat/completions", json=body)
            again = http.post("/v1/chat/completions", json=body).json()["usage"]
            assert again["prompt_tokens_details"]["cached_tokens"] == 0  # no prefix cache
    finally:
        server.stop()
