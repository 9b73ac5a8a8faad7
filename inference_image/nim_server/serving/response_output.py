"""A chat answer as Responses output: output items, usage, status, and back into chat messages."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from nim_server.protocol import AssistantMessage, ChatCompletionResponse
from nim_server.protocol import Usage as ChatUsage
from nim_server.protocol_responses import (
    IncompleteDetails,
    InputTokensDetails,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputReasoning,
    OutputText,
    OutputTokensDetails,
    ReasoningText,
    ResponseObject,
    ResponseUsage,
)

Message = dict[str, Any]
ItemStatus = Literal["completed", "incomplete"]


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def finished(skeleton: ResponseObject, answer: ChatCompletionResponse) -> ResponseObject:
    choice = answer.choices[0]
    incomplete = choice.finish_reason == "length"
    status: ItemStatus = "incomplete" if incomplete else "completed"
    return finish(skeleton, _output_items(choice.message, status), incomplete, answer.usage)


def finish(
    skeleton: ResponseObject,
    output: list[OutputItem],
    incomplete: bool,
    usage: ChatUsage | None,
) -> ResponseObject:
    """The finished response: completed, or incomplete when max_output_tokens cut it short."""
    return skeleton.model_copy(
        update={
            "status": "incomplete" if incomplete else "completed",
            "incomplete_details": (
                IncompleteDetails(reason="max_output_tokens") if incomplete else None
            ),
            "output": output,
            "usage": response_usage(usage) if usage is not None else None,
            "completed_at": None if incomplete else int(time.time()),
        }
    )


def response_usage(usage: ChatUsage) -> ResponseUsage:
    details = usage.prompt_tokens_details
    # Counted by the chat path only when the server has a reasoning parser.
    completion_details = getattr(usage, "completion_tokens_details", None)
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=InputTokensDetails(
            cached_tokens=details.cached_tokens if details is not None else 0
        ),
        output_tokens=usage.completion_tokens,
        output_tokens_details=OutputTokensDetails(
            reasoning_tokens=getattr(completion_details, "reasoning_tokens", 0) or 0
        ),
        total_tokens=usage.total_tokens,
    )


def reasoning_of(message: AssistantMessage | dict[str, Any]) -> str | None:
    """Reasoning text, where a reasoning parser put it (vLLM names it either way)."""
    if isinstance(message, dict):
        return message.get("reasoning_content") or message.get("reasoning")
    return getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)


def _output_items(message: AssistantMessage, status: ItemStatus) -> list[OutputItem]:
    items: list[OutputItem] = []
    reasoning = reasoning_of(message)
    if reasoning:
        items.append(
            OutputReasoning(
                id=item_id("rs"), status=status, content=[ReasoningText(text=reasoning)]
            )
        )
    if message.content is not None and (message.content or not message.tool_calls):
        items.append(
            OutputMessage(
                id=item_id("msg"), status=status, content=[OutputText(text=message.content)]
            )
        )
    for call in message.tool_calls or []:
        items.append(
            OutputFunctionCall(
                id=item_id("fc"),
                status=status,
                call_id=call.id,
                name=call.function.name,
                arguments=call.function.arguments,
            )
        )
    return items


def output_messages(response: ResponseObject) -> list[Message]:
    """A response's output as the assistant message a follow-up's prompt continues from."""
    texts = [
        part.text
        for item in response.output
        if isinstance(item, OutputMessage)
        for part in item.content
    ]
    calls = [
        {
            "id": item.call_id,
            "type": "function",
            "function": {"name": item.name, "arguments": item.arguments},
        }
        for item in response.output
        if isinstance(item, OutputFunctionCall)
    ]
    message: Message = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return [message]
