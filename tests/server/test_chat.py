"""Chat completions over real HTTP against the real vLLM engine on a tiny Llama."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server.conftest import SERVED_NAME, TINY_MAX_MODEL_LEN, chat_body
from tests.support.sse import json_events


def test_chat_completion_shape_and_usage(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=chat_body(max_tokens=5))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert response.headers["x-request-id"] == body["id"]
    assert body["model"] == SERVED_NAME
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    # Random weights never emit EOS this early: the budget ends generation.
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["prompt_tokens"] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("model", [None, ""])
def test_model_omitted_or_empty_uses_served_model(http: httpx.Client, model: str | None) -> None:
    body = chat_body()
    if model is None:
        del body["model"]
    else:
        body["model"] = model
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == SERVED_NAME


def test_greedy_is_deterministic_and_seed_reproduces_sampling(http: httpx.Client) -> None:
    def text(**kw: object) -> str:
        r = http.post("/v1/chat/completions", json=chat_body(max_tokens=12, **kw))
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["message"]["content"])

    assert text(temperature=0) == text(temperature=0)
    assert text(temperature=1.0, seed=7) == text(temperature=1.0, seed=7)


def test_max_completion_tokens_and_max_tokens(http: httpx.Client) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        body = chat_body()
        del body["max_tokens"]
        body[field] = 3
        r = http.post("/v1/chat/completions", json=body)
        assert r.json()["usage"]["completion_tokens"] == 3, field


def test_default_budget_fills_the_context(http: httpx.Client) -> None:
    body = chat_body(temperature=0, ignore_eos=True)
    del body["max_tokens"]
    usage = http.post("/v1/chat/completions", json=body).json()["usage"]
    # With no max_tokens, generation may run to the end of the context window.
    assert usage["total_tokens"] == TINY_MAX_MODEL_LEN


def test_n_choices_are_indexed_and_usage_sums(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json=chat_body(n=3, max_tokens=4, temperature=1, seed=1))
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 12


def test_all_roles_accepted_and_template_applied(http: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        {"role": "user", "content": [{"type": "text", "text": "And?"}]},
    ]
    r = http.post("/v1/chat/completions", json=chat_body(messages=messages))
    assert r.status_code == 200, r.text
    short = http.post("/v1/chat/completions", json=chat_body(messages=messages[2:3])).json()
    # The template wraps every message in headers: more messages, more prompt tokens.
    assert r.json()["usage"]["prompt_tokens"] > short["usage"]["prompt_tokens"] + 20


def test_stop_sequences_end_generation(http: httpx.Client) -> None:
    base = http.post("/v1/chat/completions", json=chat_body(max_tokens=30)).json()
    text = base["choices"][0]["message"]["content"]
    # Stop on a piece of what greedy decoding produces anyway; the output must end before it.
    stop = text[5:8]
    assert stop.strip(), f"need a visible stop string from {text!r}"
    for stop_value in (stop, [stop, "never-appears"]):
        r = http.post("/v1/chat/completions", json=chat_body(max_tokens=30, stop=stop_value))
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert choice["stop_reason"] == stop
        assert choice["message"]["content"] == text[: text.index(stop)]


def test_logit_bias_forces_a_token(http: httpx.Client) -> None:
    # A +100 bias on one token id makes greedy decoding pick it every time.
    token_id = 65  # a single byte-level token in the tiny vocabulary
    r = http.post(
        "/v1/chat/completions",
        json=chat_body(max_tokens=4, logit_bias={str(token_id): 100}, logprobs=True),
    )
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert len({entry["token"] for entry in content}) == 1


def test_logprobs_and_top_logprobs(http: httpx.Client) -> None:
    r = http.post(
        "/v1/chat/completions", json=chat_body(max_tokens=4, logprobs=True, top_logprobs=3)
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == 4
    for entry in content:
        assert entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 3
        top = [t["logprob"] for t in entry["top_logprobs"]]
        assert top == sorted(top, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert entry["logprob"] == pytest.approx(top[0])
        assert entry["bytes"] == list(entry["token"].encode())
    # Byte-level tokens that end inside a UTF-8 character decode to nothing on their own; the
    # joined text shows them as U+FFFD.
    joined = "".join(e["token"] for e in content)
    assert joined == choice["message"]["content"].replace("\ufffd", "")


def test_sampling_extras_accepted(http: httpx.Client) -> None:
    r = http.post(
        "/v1/chat/completions",
        json=chat_body(
            temperature=0.7,
            top_p=0.9,
            top_k=20,
            min_p=0.05,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            repetition_penalty=1.1,
            min_tokens=4,
            ignore_eos=True,
            seed=3,
            user="user-1",
            max_tokens=6,
        ),
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 6


def test_response_format_json_object(http: httpx.Client) -> None:
    r = http.post(
        "/v1/chat/completions",
        json=chat_body(max_tokens=40, response_format={"type": "json_object"}),
    )
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["message"]["content"]
    assert content.lstrip().startswith("{"), content


def test_response_format_json_schema_is_obeyed(http: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    r = http.post(
        "/v1/chat/completions",
        json=chat_body(
            max_tokens=60,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "capital", "schema": schema, "strict": True},
            },
        ),
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    parsed = json.loads(choice["message"]["content"])
    assert parsed["answer"] in {"Paris", "Rome"}


def test_a_client_request_id_is_honoured_and_echoed(http: httpx.Client) -> None:
    """Two requests with one X-Request-Id both succeed: the engine's own ids stay unique."""
    import concurrent.futures

    headers = {"X-Request-Id": "trace-4bf92f3577b34da6"}

    def post(path: str, body: dict[str, object]) -> httpx.Response:
        return http.post(path, json=body, headers=headers)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        chats = [pool.submit(post, "/v1/chat/completions", chat_body()) for _ in range(2)]
        texts = [
            pool.submit(post, "/v1/completions", {"prompt": ["a", "b"], "max_tokens": 4})
            for _ in range(2)
        ]
        for future, prefix in [(f, "chatcmpl") for f in chats] + [(f, "cmpl") for f in texts]:
            response = future.result()
            assert response.status_code == 200, response.text
            assert response.json()["id"] == f"{prefix}-trace-4bf92f3577b34da6"
            assert response.headers["x-request-id"] == response.json()["id"]
    for odd in ("a b; c", "x" * 300):  # not a tracing id: the server makes its own
        response = http.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-Request-Id": odd}
        )
        assert response.status_code == 200
        assert response.json()["id"].startswith("chatcmpl-")
        assert odd not in response.json()["id"]


def test_cached_prompt_tokens_are_reported(http: httpx.Client) -> None:
    """A prompt sent again is served from the engine's prefix cache, and usage says how much."""
    long_prompt = "The capital of France is Paris. " * 40  # several KV-cache blocks
    body = chat_body(messages=[{"role": "user", "content": long_prompt}], max_tokens=2)
    http.post("/v1/chat/completions", json=body)
    again = http.post("/v1/chat/completions", json=body).json()["usage"]
    cached = again["prompt_tokens_details"]["cached_tokens"]
    assert 0 < cached <= again["prompt_tokens"]
    streamed = http.post(
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    last = json_events(streamed.text)[-1]
    assert last["usage"]["prompt_tokens_details"]["cached_tokens"] == cached
    text = {"prompt": long_prompt, "max_tokens": 2}
    http.post("/v1/completions", json=text)
    completion = http.post("/v1/completions", json=text).json()["usage"]
    assert completion["prompt_tokens_details"]["cached_tokens"] > 0
