"""Text completions: string, list and token-id prompts, echo, logprobs."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import SERVED_NAME


def complete(http: httpx.Client, **body: object) -> dict[str, object]:
    response = http.post("/v1/completions", json={"model": SERVED_NAME, "temperature": 0, **body})
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def test_string_prompt_defaults_to_16_tokens(http: httpx.Client) -> None:
    body = complete(http, prompt="Hello, world!")
    assert body["object"] == "text_completion"
    assert str(body["id"]).startswith("cmpl-")
    (choice,) = body["choices"]  # type: ignore[misc]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 16  # type: ignore[index]


def test_list_of_prompts_gives_one_choice_each_times_n(http: httpx.Client) -> None:
    prompts = ["one", "two words", "three more words"]
    body = complete(http, prompt=prompts, max_tokens=2, n=2, temperature=1, seed=4)
    choices = body["choices"]
    assert [c["index"] for c in choices] == list(range(6))  # type: ignore[union-attr]
    assert body["usage"]["completion_tokens"] == 12  # type: ignore[index]
    greedy = complete(http, prompt=prompts, max_tokens=3)
    single = complete(http, prompt="two words", max_tokens=3)
    # Choice i belongs to prompt i: the batch answer equals the single-prompt answer.
    assert greedy["choices"][1]["text"] == single["choices"][0]["text"]  # type: ignore[index]


def test_token_id_prompts(http: httpx.Client) -> None:
    as_text = complete(http, prompt="Hello", max_tokens=3)
    tokens = http.post(
        "/v1/completions", json={"prompt": [44, 77, 262], "max_tokens": 3, "temperature": 0}
    )
    assert tokens.status_code == 200, tokens.text
    batch = complete(http, prompt=[[44, 77], [262]], max_tokens=2)
    assert len(batch["choices"]) == 2  # type: ignore[arg-type]
    assert as_text["usage"]["prompt_tokens"] >= 1  # type: ignore[index]
    assert tokens.json()["usage"]["prompt_tokens"] == 3


def test_echo_prepends_prompt(http: httpx.Client) -> None:
    plain = complete(http, prompt="The quick brown fox", max_tokens=4)
    echoed = complete(http, prompt="The quick brown fox", max_tokens=4, echo=True)
    text = echoed["choices"][0]["text"]  # type: ignore[index]
    assert text == "The quick brown fox" + plain["choices"][0]["text"]  # type: ignore[index]


def test_logprobs_with_echo_cover_prompt_and_completion(http: httpx.Client) -> None:
    # lm-evaluation-harness scores prompts this way (echo + logprobs).
    body = complete(http, prompt="The quick brown fox", max_tokens=2, echo=True, logprobs=1)
    usage = body["usage"]
    logprobs = body["choices"][0]["logprobs"]  # type: ignore[index]
    n_tokens = usage["prompt_tokens"] + usage["completion_tokens"]  # type: ignore[index]
    assert len(logprobs["tokens"]) == n_tokens
    assert logprobs["token_logprobs"][0] is None  # nothing precedes the first token
    assert all(lp <= 0 for lp in logprobs["token_logprobs"][1:])
    assert logprobs["top_logprobs"][0] is None
    assert all(len(top) >= 1 for top in logprobs["top_logprobs"][1:])
    offsets = logprobs["text_offset"]
    assert offsets == sorted(offsets)
    assert offsets[0] == 0


def test_logprobs_without_echo(http: httpx.Client) -> None:
    body = complete(http, prompt="Hello", max_tokens=3, logprobs=2)
    logprobs = body["choices"][0]["logprobs"]  # type: ignore[index]
    assert len(logprobs["tokens"]) == 3
    # A dict keyed by token text: two ids that decode alike (partial UTF-8) share one key.
    assert all(1 <= len(top) <= 2 for top in logprobs["top_logprobs"])
    assert any(len(top) == 2 for top in logprobs["top_logprobs"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("suffix", "tail"), ("best_of", 3)],
)
def test_unsupported_fields_are_rejected_clearly(
    http: httpx.Client, field: str, value: object
) -> None:
    response = http.post("/v1/completions", json={"prompt": "x", field: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field
    assert "not supported" in error["message"]
