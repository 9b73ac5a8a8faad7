"""POST /tokenize and /detokenize with the served model's own tokenizer, as vLLM has them."""

from __future__ import annotations

import httpx

from tests.server.conftest import SERVED_NAME, TINY_MAX_MODEL_LEN, chat_body
from tests.server.test_errors import assert_error


def test_tokenize_then_detokenize_round_trips(http: httpx.Client) -> None:
    text = "The capital of France is Paris."
    tokens = http.post("/tokenize", json={"prompt": text, "return_token_strs": True}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 1
    assert tokens["max_model_len"] == TINY_MAX_MODEL_LEN
    assert len(tokens["token_strs"]) == tokens["count"]
    bare = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    # The tiny tokenizer adds no BOS of its own, so both agree; a Llama 3 one would add one.
    assert bare["tokens"] == tokens["tokens"][-bare["count"] :]
    assert "token_strs" not in bare or bare["token_strs"] is None
    back = http.post("/detokenize", json={"model": SERVED_NAME, "tokens": bare["tokens"]})
    assert back.status_code == 200, back.text
    assert back.json() == {"prompt": text}


def test_tokenize_a_conversation_counts_what_chat_sends(http: httpx.Client) -> None:
    """The count for `messages` is the prompt the chat endpoint bills as prompt_tokens."""
    body = chat_body(max_tokens=1)
    counted = http.post("/tokenize", json={"messages": body["messages"]}).json()
    billed = http.post("/v1/chat/completions", json=body).json()["usage"]["prompt_tokens"]
    assert counted["count"] == billed


def test_tokenizer_mistakes_are_400(http: httpx.Client) -> None:
    assert_error(http.post("/tokenize", json={}), 400, "prompt")
    assert_error(http.post("/tokenize", json={"prompt": "a", "messages": []}), 400)
    assert_error(http.post("/detokenize", json={"tokens": [10**9]}), 400, "tokens")
    assert_error(http.post("/detokenize", json={"tokens": [-1]}), 400, "tokens.0")
    assert_error(http.post("/tokenize", json={"prompt": "a", "model": "other"}), 404)


def test_tokenizer_needs_the_api_key(server_url: str) -> None:
    assert httpx.post(f"{server_url}/tokenize", json={"prompt": "a"}).status_code == 401
