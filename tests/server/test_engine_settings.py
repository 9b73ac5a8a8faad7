"""NIM's engine settings reach vLLM: NIM_PASSTHROUGH_ARGS, NIM_ENABLE_KV_CACHE_REUSE and
NIM_CHAT_TEMPLATE (a file replacing the tokenizer's template)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.server.conftest import chat_body, tiny_server_env
from tests.support.server_process import ready_server

TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"


def test_engine_settings_reach_the_engine(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {
        **tiny_server_env(tiny_model_dir, tmp_path / "cache"),
        "NIM_PASSTHROUGH_ARGS": "--max-num-seqs 3",
        "NIM_ENABLE_KV_CACHE_REUSE": "false",
        "NIM_CHAT_TEMPLATE": str(tmp_path / "template.jinja"),
    }
    (tmp_path / "template.jinja").write_text(TEMPLATE)
    with (
        ready_server(tmp_path, env) as server,
        httpx.Client(base_url=server.base_url, timeout=60) as http,
    ):
        metrics = http.get("/v1/metrics").text
        limit = re.search(r"^num_request_max(?:\{[^}]*\})? (\S+)$", metrics, re.MULTILINE)
        assert limit is not None, metrics[:2000]
        assert float(limit.group(1)) == 3  # the engine runs 3 sequences at once
        long_prompt = "The capital of France is Paris. " * 40
        body = chat_body(messages=[{"role": "user", "content": long_prompt}], max_tokens=2)
        http.post("/v1/chat/completions", json=body)
        again = http.post("/v1/chat/completions", json=body).json()["usage"]
        assert again["prompt_tokens_details"]["cached_tokens"] == 0  # no prefix cache
        # The conversation is rendered with our template, not the tokenizer's.
        messages = [{"role": "user", "content": "Hello there"}]
        rendered = http.post("/tokenize", json={"messages": messages}).json()["tokens"]
        text = http.post("/detokenize", json={"tokens": rendered}).json()["prompt"]
        assert text == "[user] Hello there\n[assistant]"
