"""POST /v1/completions: one choice per prompt (times `n`), streamed or collected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nim_server.engine import EnginePrompt, InferenceEngine, ServedModel
from nim_server.errors import invalid_request
from nim_server.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from nim_server.serving.chunks import ChunkEncoder
from nim_server.serving.common import (
    engine_request_id,
    framed_stream,
    merge_streams,
    output_budget,
    served_model,
    started,
    token_text,
    top_entries,
    usage,
)
from nim_server.serving.sampling import sampling_params

if TYPE_CHECKING:
    from vllm import CompletionOutput, RequestOutput
    from vllm.logprobs import Logprob


@dataclass
class _Prompt:
    engine_prompt: EnginePrompt
    text: str  # for echo


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    chars: int = 0  # text offset of the next token, for logprobs
    prompt_logprobs_sent: bool = False


class CompletionService:
    def __init__(
        self, engine: InferenceEngine, on_stream_error: Callable[[], None] = lambda: None
    ) -> None:
        self._engine = engine
        self._on_stream_error = on_stream_error  # counts in-band failures in the metrics

    async def create(
        self, request: CompletionRequest, request_id: str
    ) -> CompletionResponse | AsyncIterator[str]:
        model = served_model(self._engine, request.model)
        raw_prompts = _split_prompts(request.prompt)
        for raw in raw_prompts:
            if not isinstance(raw, str) and max(raw) >= model.vocab_size:
                raise invalid_request(
                    f"Token id {max(raw)} is outside the vocabulary (0..{model.vocab_size - 1}).",
                    param="prompt",
                )
        prompts = [await self._prepare(raw) for raw in raw_prompts]
        param = "prompt"
        budgets = [
            output_budget(model, len(p.engine_prompt.token_ids), request.max_tokens, param=param)
            for p in prompts
        ]
        streams = []
        for index, (prompt, budget) in enumerate(zip(prompts, budgets, strict=True)):
            params = sampling_params(
                request,
                max_tokens=budget,
                vocab_size=model.vocab_size,
                logprobs=request.logprobs,
                prompt_logprobs=request.logprobs if request.echo else None,
            )
            stream = self._engine.generate(
                prompt.engine_prompt,
                params,
                engine_request_id(f"{request_id}-{index}"),
                model.lora,
            )
            streams.append(await started(stream))
        if request.stream:
            chunks = self._chunks(request, request_id, model, prompts, streams)
            return framed_stream(chunks, streams, self._on_stream_error)
        return await self._collect(request, request_id, model, prompts, streams)

    async def _prepare(self, raw: str | list[int]) -> _Prompt:
        prompt = await self._engine.render_text(raw)
        if not prompt.token_ids:
            raise invalid_request("The prompt is empty.", param="prompt")
        text = raw if isinstance(raw, str) else self._engine.decode(raw)
        return _Prompt(engine_prompt=prompt, text=text)

    async def _collect(
        self,
        request: CompletionRequest,
        request_id: str,
        model: ServedModel,
        prompts: list[_Prompt],
        streams: list[AsyncIterator[RequestOutput]],
    ) -> CompletionResponse:
        async def collect_one(
            index: int, prompt: _Prompt, outputs: AsyncIterator[RequestOutput]
        ) -> list[_Choice]:
            choices = [_Choice() for _ in range(request.n)]
            if request.echo:
                for choice in choices:
                    choice.text.append(prompt.text)
            async for output in outputs:
                cached[index] = output.num_cached_tokens
                for completion in output.outputs:
                    choice = choices[completion.index]
                    choice.text.append(completion.text)
                    choice.tokens += len(completion.token_ids)
                    if request.logprobs is not None:
                        choice.logprobs = _extend_logprobs(
                            choice.logprobs,
                            _completion_logprobs(
                                output, completion, request, self._engine, choice, prompt
                            ),
                        )
                    if completion.finish_reason is not None:
                        choice.finish_reason = completion.finish_reason
                        choice.stop_reason = completion.stop_reason
            return choices

        cached: list[int | None] = [None] * len(prompts)
        per_prompt = await asyncio.gather(
            *(
                collect_one(index, p, outputs)
                for index, (p, outputs) in enumerate(zip(prompts, streams, strict=True))
            )
        )
        choices = [
            CompletionChoice(
                index=p_index * request.n + c_index,
                text="".join(choice.text),
                logprobs=choice.logprobs,
                finish_reason=choice.finish_reason,
                stop_reason=choice.stop_reason,
            )
            for p_index, prompt_choices in enumerate(per_prompt)
            for c_index, choice in enumerate(prompt_choices)
        ]
        prompt_tokens = sum(len(p.engine_prompt.token_ids) for p in prompts)
        completion_tokens = sum(c.tokens for prompt_choices in per_prompt for c in prompt_choices)
        return CompletionResponse(
            id=request_id,
            model=model.name,
            choices=choices,
            usage=usage(prompt_tokens, completion_tokens, _total_cached(cached)),
        )

    async def _chunks(
        self,
        request: CompletionRequest,
        request_id: str,
        model: ServedModel,
        prompts: list[_Prompt],
        streams: list[AsyncIterator[RequestOutput]],
    ) -> AsyncIterator[str]:
        created = int(time.time())
        prompt_tokens = sum(len(p.engine_prompt.token_ids) for p in prompts)
        completion_tokens = 0
        states = [[_Choice() for _ in range(request.n)] for _ in prompts]
        echoed: set[tuple[int, int]] = set()

        chunk = ChunkEncoder(request_id, created, model.name, "text_completion").encode

        cached: list[int | None] = [None] * len(prompts)
        async for p_index, output in merge_streams(streams):
            cached[p_index] = output.num_cached_tokens
            choices = []
            for completion in output.outputs:
                completion_tokens += len(completion.token_ids)
                state = states[p_index][completion.index]
                text = completion.text
                if request.echo and (p_index, completion.index) not in echoed:
                    echoed.add((p_index, completion.index))
                    text = prompts[p_index].text + text
                if not text and completion.finish_reason is None:
                    continue
                logprobs = None
                if request.logprobs is not None:
                    logprobs = _completion_logprobs(
                        output, completion, request, self._engine, state, prompts[p_index]
                    )
                state.text.append(text)
                choices.append(
                    {
                        "index": p_index * request.n + completion.index,
                        "text": text,
                        "logprobs": logprobs.model_dump() if logprobs is not None else None,
                        "finish_reason": completion.finish_reason,
                        "stop_reason": completion.stop_reason,
                    }
                )
            if choices:
                yield chunk(choices)
        if request.include_usage:
            yield chunk([], usage(prompt_tokens, completion_tokens, _total_cached(cached)))


def _split_prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [prompt]  # one prompt given as token ids
    return list(prompt)  # type: ignore[arg-type]


def _completion_logprobs(
    output: RequestOutput,
    completion: CompletionOutput,
    request: CompletionRequest,
    engine: InferenceEngine,
    choice: _Choice,
    prompt: _Prompt,
) -> CompletionLogprobs:
    """Logprobs of the tokens in this output, preceded by the prompt's on the first echo."""
    token_ids: list[int] = []
    positions: list[dict[int, Logprob] | None] = []
    if request.echo and not choice.prompt_logprobs_sent:
        choice.prompt_logprobs_sent = True
        token_ids += prompt.engine_prompt.token_ids
        positions += list(output.prompt_logprobs or [None] * len(token_ids))
    token_ids += list(completion.token_ids)
    positions += list(completion.logprobs or [])
    fallback = dict(zip(token_ids, engine.token_strings(token_ids), strict=True))
    result = CompletionLogprobs(text_offset=[], token_logprobs=[], tokens=[], top_logprobs=[])
    for token_id, position in zip(token_ids, positions, strict=False):
        sampled = position.get(token_id) if position else None
        text = token_text(sampled, fallback.get(token_id, ""))
        result.tokens.append(text)
        result.text_offset.append(choice.chars)
        choice.chars += len(text)
        if position is None:  # the first prompt token has no logprob
            result.token_logprobs.append(None)
            result.top_logprobs.append(None)
            continue
        result.token_logprobs.append(max(sampled.logprob, -9999.0) if sampled else -9999.0)
        result.top_logprobs.append(dict(top_entries(position, request.logprobs or 0, fallback)))
    return result


def _extend_logprobs(
    current: CompletionLogprobs | None, more: CompletionLogprobs
) -> CompletionLogprobs:
    if current is None:
        return more
    return CompletionLogprobs(
        text_offset=current.text_offset + more.text_offset,
        token_logprobs=current.token_logprobs + more.token_logprobs,
        tokens=current.tokens + more.tokens,
        top_logprobs=current.top_logprobs + more.top_logprobs,
    )


def _total_cached(per_prompt: list[int | None]) -> int | None:
    """Prefix-cache hits over all prompts, once the engine has reported them for each."""
    if any(count is None for count in per_prompt):
        return None
    return sum(count for count in per_prompt if count is not None)
