"""POST /v1/responses: OpenAI's Responses API, answered through the chat path.

A Responses request becomes one ChatCompletionRequest (instructions, the stored conversation of
`previous_response_id`, then `input` as chat messages; function tools, tool_choice, text.format
as their chat forms), so tool calling, structured outputs, limits and errors behave exactly as
in /v1/chat/completions. The chat answer (or its stream of chunks) is turned back into a
Response object (or the Responses event stream, serving/responses_stream.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from nim_server.engine import InferenceEngine
from nim_server.errors import APIError, from_validation_error, invalid_request
from nim_server.protocol import ChatCompletionRequest, ChatCompletionResponse
from nim_server.protocol_responses import (
    SAMPLING_EXTRAS,
    Content,
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    ResponseCreateRequest,
    ResponseObject,
)
from nim_server.serving.chat import ChatService
from nim_server.serving.common import served_model
from nim_server.serving.response_output import finished, output_messages
from nim_server.serving.response_store import ResponseStore
from nim_server.serving.responses_stream import ResponseEventStream

Message = dict[str, Any]
StreamEvent = dict[str, str]


class ResponsesService:
    def __init__(
        self,
        chat: ChatService,
        engine: InferenceEngine,
        store: ResponseStore,
    ) -> None:
        self._chat = chat
        self._engine = engine
        self.store = store

    async def create(
        self, request: ResponseCreateRequest, response_id: str
    ) -> ResponseObject | AsyncIterator[StreamEvent]:
        model = served_model(self._engine, request.model)
        conversation = [*self._history(request), *input_messages(request)]
        chat_request = _chat_request(request, conversation)
        try:
            answer = await self._chat.create(chat_request, response_id)
        except APIError as error:
            raise _in_responses_terms(error) from None
        skeleton = _skeleton(request, response_id, model.name)
        if isinstance(answer, ChatCompletionResponse):
            response = finished(skeleton, answer)
            self._remember(request, response, conversation)
            return response
        events = ResponseEventStream(skeleton)
        return events.run(answer, lambda final: self._remember(request, final, conversation))

    def _history(self, request: ResponseCreateRequest) -> list[Message]:
        if request.previous_response_id is None:
            return []
        stored = self.store.get(request.previous_response_id)
        if stored is None:
            raise response_not_found(request.previous_response_id, "previous_response_id")
        return stored.messages

    def _remember(
        self, request: ResponseCreateRequest, response: ResponseObject, conversation: list[Message]
    ) -> None:
        if request.store and response.status in ("completed", "incomplete"):
            self.store.put(response, [*conversation, *output_messages(response)])


def response_not_found(response_id: str, param: str) -> APIError:
    return APIError(
        404,
        f"Response with id '{response_id}' not found: it was never stored (store: false), has "
        "been evicted, was deleted, or was stored by another replica.",
        param=param,
        code="response_not_found",
    )


# ----- request: Responses -> chat ------------------------------------------------------------


def input_messages(request: ResponseCreateRequest) -> list[Message]:
    """`input` as chat messages; consecutive function calls become one assistant message."""
    if isinstance(request.input, str):
        return [{"role": "user", "content": request.input}]
    messages: list[Message] = []
    for index, item in enumerate(request.input):
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": _text(item.content, index)})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            messages.append(
                {"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output, index)}
            )
        # Reasoning items are left out, as chat templates leave out earlier reasoning.
    if not messages:
        raise invalid_request("`input` has no message or function call to answer", param="input")
    return messages


def _text(content: Content, index: int) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for part_index, part in enumerate(content):
        text = part.as_text
        if text is None:
            raise invalid_request(
                f"content part type {part.type!r} is not supported: this model accepts text only "
                "(input_text)",
                param=f"input.{index}.content.{part_index}",
            )
        texts.append(text)
    return "".join(texts)


def _chat_request(
    request: ResponseCreateRequest, conversation: list[Message]
) -> ChatCompletionRequest:
    messages = list(conversation)
    if request.instructions:
        messages.insert(0, {"role": "system", "content": request.instructions})
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "parallel_tool_calls": request.parallel_tool_calls,
        "user": request.user,
        "stream": request.stream,
        "reasoning_effort": request.reasoning.effort if request.reasoning is not None else None,
        **request.model_dump(include=set(SAMPLING_EXTRAS), exclude_none=True),
    }
    if request.stream:
        body["stream_options"] = {"include_usage": True}  # usage goes in response.completed
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
            for tool in request.tools
        ]
    if request.tool_choice is not None:
        choice = request.tool_choice
        body["tool_choice"] = (
            choice
            if isinstance(choice, str)
            else {"type": "function", "function": {"name": choice.name}}
        )
    response_format = _response_format(request)
    if response_format is not None:
        body["response_format"] = response_format
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as error:
        raise _in_responses_terms(from_validation_error(error)) from None


def _response_format(request: ResponseCreateRequest) -> dict[str, Any] | None:
    """`text.format` as chat's response_format; None for plain text.

    A required or named tool_choice makes the output a function call, and `text.format` shapes
    text only, so it has nothing to constrain (the Agents SDK sends both when an agent with an
    output type forces a tool). The chat path, where both would constrain the same output,
    refuses the pair.
    """
    text_format = request.text.format if request.text is not None else None
    forced_call = bool(request.tools) and request.tool_choice not in (None, "none", "auto")
    if text_format is None or text_format.type == "text" or forced_call:
        return None
    if text_format.type == "json_object":
        return {"type": "json_object"}
    schema = {
        "name": text_format.name or "response",
        "description": text_format.description,
        "schema": text_format.schema_,
        "strict": text_format.strict,
    }
    return {"type": "json_schema", "json_schema": schema}


# Chat parameter (prefix) -> the Responses parameter it came from.
_PARAMS = (
    ("messages", "input"),
    ("max_completion_tokens", "max_output_tokens"),
    ("max_tokens", "max_output_tokens"),
    ("response_format", "text.format"),
    ("reasoning_effort", "reasoning.effort"),
)


def _in_responses_terms(error: APIError) -> APIError:
    """The chat path's error, naming the Responses parameter the client actually sent."""
    param = error.param
    if param is None:
        return error
    for chat_name, name in _PARAMS:
        if param == chat_name or param.startswith(chat_name + "."):
            param = name
            break
    else:
        param = param.replace(
            ".function.", "."
        )  # tools.0.function.parameters -> tools.0.parameters
    error.param = param
    return error


# ----- response skeleton ------------------------------------------------------------------


def _skeleton(request: ResponseCreateRequest, response_id: str, model: str) -> ResponseObject:
    """The response before any output: what `response.created` carries, echoing the request."""
    text_format = request.text.format if request.text is not None else None
    tool_choice: str | dict[str, Any] = "auto"
    if request.tool_choice is not None:
        tool_choice = (
            request.tool_choice
            if isinstance(request.tool_choice, str)
            else request.tool_choice.model_dump()
        )
    return ResponseObject(
        id=response_id,
        status="in_progress",
        model=model,
        instructions=request.instructions,
        max_output_tokens=request.max_output_tokens,
        max_tool_calls=request.max_tool_calls,
        parallel_tool_calls=request.parallel_tool_calls is not False,
        previous_response_id=request.previous_response_id,
        reasoning=request.reasoning.model_dump() if request.reasoning is not None else None,
        store=request.store,
        temperature=request.temperature,
        top_p=request.top_p,
        text={
            "format": (
                text_format.model_dump(by_alias=True, exclude_none=True)
                if text_format is not None
                else {"type": "text"}
            )
        },
        tool_choice=tool_choice,
        tools=[tool.model_dump(exclude_none=True) for tool in request.tools or []],
        user=request.user,
        metadata=request.metadata or {},
    )
