"""vLLM's own form of a chat request: what its tool-call and reasoning parsers read."""

from __future__ import annotations

from typing import Any

from nim_server.protocol import ChatCompletionRequest, NamedToolChoice


def engine_chat_request(request: ChatCompletionRequest, template_kwargs: dict[str, Any]) -> Any:
    """vLLM's ChatCompletionRequest with the fields its parsers look at, taken from ours.

    The parsers get the conversation's tools, the tool choice, the template arguments (some read
    switches such as `enable_thinking` there) and whether special tokens are skipped, which a
    parser's `adjust_request` may turn off.
    """
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionRequest as EngineChatRequest,
    )

    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": ""}],
        "skip_special_tokens": request.skip_special_tokens,
        "include_reasoning": request.include_reasoning,
        "chat_template_kwargs": template_kwargs,
    }
    if request.tools:
        body["tools"] = [tool.model_dump(exclude_none=True) for tool in request.tools]
        body["tool_choice"] = (
            request.tool_choice.model_dump()
            if isinstance(request.tool_choice, NamedToolChoice)
            else request.tool_choice or "auto"
        )
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    return EngineChatRequest.model_validate(body)
