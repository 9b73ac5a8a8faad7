"""POST /v1/chat/completions: one response, or a stream of chunks, from the engine."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from nim_server.engine import InferenceEngine
from nim_server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprob,
    ChatTokenLogprob,
)
from nim_server.serving.answer import AnswerParser
from nim_server.serving.chunks import ChunkEncoder
from nim_server.serving.common import (
    check_message_content,
    engine_request_id,
    framed_stream,
    output_budget,
    served_model,
    started,
    token_text,
    top_entries,
    usage,
)
from nim_server.serving.reasoning import ReasoningSettings, plan_reasoning
from nim_server.serving.sampling import sampling_params
from nim_server.serving.tools import ToolPlan, ToolSettings, plan_tools

if TYPE_CHECKING:
    from vllm import CompletionOutput, RequestOutput

    from nim_server.engine import EnginePrompt, ServedModel


class ChatService:
    def __init__(
        self,
        engine: InferenceEngine,
        on_stream_error: Callable[[], None] = lambda: None,
        tools: ToolSettings | None = None,
        reasoning: ReasoningSettings | None = None,
    ) -> None:
        self._engine = engine
        self._on_stream_error = on_stream_error  # counts in-band failures in the metrics
        self._tools = tools or ToolSettings()
        self._reasoning = reasoning or ReasoningSettings()

    async def create(
        self, request: ChatCompletionRequest, request_id: str
    ) -> ChatCompletionResponse | AsyncIterator[str]:
        model = served_model(self._engine, request.model)
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        check_message_content(messages)
        tools = plan_tools(request, self._tools, self._engine)
        template_kwargs = _template_kwargs(request, tools)
        thinking = plan_reasoning(request, self._reasoning, self._engine, template_kwargs)
        if any(plan is not None and plan.keep_special_tokens for plan in (tools, thinking)):
            request = request.model_copy(update={"skip_special_tokens": False})
        prompt = await self._engine.render_chat(
            messages,
            add_generation_prompt=request.add_generation_prompt,
            template_kwargs=template_kwargs,
        )
        if thinking is not None:
            thinking.read_prompt(prompt.token_ids)
        max_tokens = output_budget(
            model, len(prompt.token_ids), request.output_limit, param="messages"
        )
        params = sampling_params(
            request,
            max_tokens=max_tokens,
            vocab_size=model.vocab_size,
            logprobs=(request.top_logprobs or 0) if request.logprobs else None,
            constraint=tools.constraint if tools is not None else None,
        )
        outputs = self._engine.generate(prompt, params, engine_request_id(request_id), model.lora)
        outputs = await started(outputs)
        calls = tools if tools is not None and tools.calls_tools else None

        def answer_parser() -> AnswerParser:
            return AnswerParser(
                reasoning=thinking.splitter() if thinking is not None else None,
                calls=calls.extractor() if calls is not None else None,
                include_reasoning=request.include_reasoning,
            )

        if request.stream:
            chunks = self._chunks(request, request_id, model, prompt, outputs, answer_parser)
            return framed_stream(chunks, [outputs], self._on_stream_error)
        return await self._collect(request, request_id, model, prompt, outputs, answer_parser)

    async def _collect(
        self,
        request: ChatCompletionRequest,
        request_id: str,
        model: ServedModel,
        prompt: EnginePrompt,
        outputs: AsyncIterator[RequestOutput],
        answer_parser: Callable[[], AnswerParser],
    ) -> ChatCompletionResponse:
        choices = [_ChoiceState() for _ in range(request.n)]
        cached: int | None = None
        async for output in outputs:
            _absorb(output, choices, request, self._engine)
            cached = output.num_cached_tokens
        completion_tokens = sum(len(c.token_ids) for c in choices)
        parsers = [answer_parser() for _ in choices]
        response_choices = [
            _choice(index, state, request, parser)
            for index, (state, parser) in enumerate(zip(choices, parsers, strict=True))
        ]
        return ChatCompletionResponse(
            id=request_id,
            model=model.name,
            choices=response_choices,
            usage=usage(
                len(prompt.token_ids), completion_tokens, cached, _reasoning_tokens(parsers)
            ),
        )

    async def _chunks(
        self,
        request: ChatCompletionRequest,
        request_id: str,
        model: ServedModel,
        prompt: EnginePrompt,
        outputs: AsyncIterator[RequestOutput],
        answer_parser: Callable[[], AnswerParser],
    ) -> AsyncIterator[str]:
        created = int(time.time())
        parsers = [answer_parser() for _ in range(request.n)]
        continuous = (
            request.stream_options is not None and request.stream_options.continuous_usage_stats
        )
        prompt_tokens = len(prompt.token_ids)
        completion_tokens = 0

        chunk = ChunkEncoder(request_id, created, model.name, "chat.completion.chunk").encode

        # The first chunk of each choice announces the role, as OpenAI's does.
        yield chunk(
            [
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
                for i in range(request.n)
            ],
            usage(prompt_tokens, 0) if continuous else None,
        )
        cached: int | None = None
        async for output in outputs:
            cached = output.num_cached_tokens
            choices = []
            for completion in output.outputs:
                completion_tokens += len(completion.token_ids)
                if not completion.text and completion.finish_reason is None:
                    continue  # a token that decodes to nothing yet (partial UTF-8)
                parser = parsers[completion.index]
                finished = completion.finish_reason is not None
                delta = parser.feed(completion.text, completion.token_ids, finished)
                if delta is None and not finished:
                    continue  # the parsers hold the text until they know what it is
                logprobs = (
                    _chat_logprobs(completion, request, self._engine).model_dump()
                    if request.logprobs
                    else None
                )
                choices.append(
                    {
                        "index": completion.index,
                        "delta": delta or {},
                        "logprobs": logprobs,
                        "finish_reason": parser.finish_reason(completion.finish_reason),
                        "stop_reason": completion.stop_reason,
                    }
                )
            if choices:
                yield chunk(
                    choices,
                    usage(prompt_tokens, completion_tokens, cached, _reasoning_tokens(parsers))
                    if continuous
                    else None,
                )
        if request.include_usage:
            yield chunk(
                [], usage(prompt_tokens, completion_tokens, cached, _reasoning_tokens(parsers))
            )


def _template_kwargs(request: ChatCompletionRequest, tools: ToolPlan | None) -> dict[str, Any]:
    """What the chat template is rendered with: the request's own, the tools, the effort."""
    kwargs = {**(request.chat_template_kwargs or {})}
    if tools is not None:
        kwargs.update(tools.template_kwargs)
    if request.reasoning_effort is not None:
        kwargs["reasoning_effort"] = request.reasoning_effort  # as vLLM hands it to templates
    return kwargs


def _reasoning_tokens(parsers: list[AnswerParser]) -> int | None:
    counts = [parser.reasoning_tokens() for parser in parsers]
    return None if None in counts else sum(c for c in counts if c is not None)


def _choice(
    index: int, state: _ChoiceState, request: ChatCompletionRequest, parser: AnswerParser
) -> ChatChoice:
    answer = parser.result("".join(state.text), state.token_ids)
    return ChatChoice(
        index=index,
        message=AssistantMessage(
            content=answer.content,
            reasoning_content=answer.reasoning,
            tool_calls=answer.tool_calls,
        ),
        logprobs=ChatChoiceLogprobs(content=state.logprobs) if request.logprobs else None,
        finish_reason=parser.finish_reason(state.finish_reason),
        stop_reason=state.stop_reason,
    )


class _ChoiceState:
    __slots__ = ("finish_reason", "logprobs", "stop_reason", "text", "token_ids")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.logprobs: list[ChatTokenLogprob] = []
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None


def _absorb(
    output: RequestOutput,
    choices: list[_ChoiceState],
    request: ChatCompletionRequest,
    engine: InferenceEngine,
) -> None:
    for completion in output.outputs:
        state = choices[completion.index]
        state.text.append(completion.text)
        state.token_ids.extend(completion.token_ids)
        if request.logprobs:
            logprobs = _chat_logprobs(completion, request, engine)
            if logprobs.content:
                state.logprobs.extend(logprobs.content)
        if completion.finish_reason is not None:
            state.finish_reason = completion.finish_reason
            state.stop_reason = completion.stop_reason


def _chat_logprobs(
    completion: CompletionOutput, request: ChatCompletionRequest, engine: InferenceEngine
) -> ChatChoiceLogprobs:
    positions = completion.logprobs or []
    token_ids = list(completion.token_ids)
    fallback = dict(zip(token_ids, engine.token_strings(token_ids), strict=True))
    content = []
    for token_id, position in zip(token_ids, positions, strict=False):
        if position is None:  # never for generated tokens; keeps the types honest
            continue
        sampled = position.get(token_id)
        text = token_text(sampled, fallback.get(token_id, ""))
        top = top_entries(position, request.top_logprobs or 0, fallback)
        content.append(
            ChatTokenLogprob(
                token=text,
                logprob=max(sampled.logprob, -9999.0) if sampled is not None else -9999.0,
                bytes=list(text.encode()),
                top_logprobs=[
                    ChatLogprob(token=t, logprob=lp, bytes=list(t.encode())) for t, lp in top
                ],
            )
        )
    return ChatChoiceLogprobs(content=content)
