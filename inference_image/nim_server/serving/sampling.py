"""Translate request fields into the engine's sampling parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nim_server.errors import invalid_request
from nim_server.protocol import NvExt, SamplingFields
from nim_server.serving.structured import structured_outputs

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams


def sampling_params(
    request: SamplingFields,
    *,
    max_tokens: int,
    vocab_size: int,
    logprobs: int | None,
    prompt_logprobs: int | None = None,
    constraint: StructuredOutputsParams | None = None,
) -> SamplingParams:
    """The engine's parameters; `constraint` replaces the request's own structured output."""
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import RequestOutputKind

    if request.stop_token_ids and any(t >= vocab_size for t in request.stop_token_ids):
        raise invalid_request(
            f"stop_token_ids must be token ids below the vocabulary size {vocab_size}",
            param="stop_token_ids",
        )
    if request.n > 1 and request.temperature == 0:
        # The engine refuses this; say why in the client's terms.
        raise invalid_request(
            "n > 1 needs sampling: with temperature 0 every choice would be the same",
            param="n",
        )
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    # NIM 1.x clients send these vLLM extras inside `nvext`; the top-level field wins.
    nvext = request.nvext or NvExt()
    top_k = request.top_k if request.top_k is not None else nvext.top_k
    repetition_penalty = (
        request.repetition_penalty
        if request.repetition_penalty is not None
        else nvext.repetition_penalty
    )
    try:
        return SamplingParams(
            n=request.n,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=0 if top_k is None else top_k,
            min_p=0.0 if request.min_p is None else request.min_p,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            repetition_penalty=1.0 if repetition_penalty is None else repetition_penalty,
            seed=request.seed,
            stop=stop,
            stop_token_ids=request.stop_token_ids,
            include_stop_str_in_output=request.include_stop_str_in_output,
            ignore_eos=request.ignore_eos or bool(nvext.ignore_eos),
            max_tokens=max_tokens,
            min_tokens=min(request.min_tokens, max_tokens),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            skip_special_tokens=request.skip_special_tokens,
            logit_bias=_logit_bias(request.logit_bias, vocab_size),
            structured_outputs=constraint or structured_outputs(request),
            # Streams take deltas (each output carries only the new tokens); a JSON answer takes
            # the final output alone instead of one Python wake-up per generated token.
            output_kind=RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY,
        )
    except VLLMValidationError as error:
        # Combinations the engine refuses, e.g. n > 1 with greedy sampling.
        raise invalid_request(str(error.args[0]), param=error.parameter) from None


def _logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float] | None:
    if not bias:
        return None
    parsed: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token_id = int(key)
        except ValueError:
            raise invalid_request(
                f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
            ) from None
        if not 0 <= token_id < vocab_size:
            raise invalid_request(
                f"logit_bias token id {token_id} is outside the vocabulary (0..{vocab_size - 1})",
                param="logit_bias",
            )
        parsed[token_id] = value
    return parsed
