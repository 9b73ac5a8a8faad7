"""The Responses API's event stream, built from the chat path's stream of chunks.

OpenAI frames each event as `event: <type>` plus `data: <json>` (the JSON repeats `type` and
carries a `sequence_number`), and sends no `[DONE]`. The order the openai SDK's stream helper
checks: `response.created`, `response.in_progress`, then per output item `output_item.added`,
its content (`content_part.added`, `output_text.delta`..., `output_text.done`,
`content_part.done`; or `function_call_arguments.delta`..., `.done`), `output_item.done`; and
last `response.completed` (or `response.incomplete` when max_output_tokens cut it short, or
`response.failed` for an error after the stream started).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from nim_server.protocol import Usage as ChatUsage
from nim_server.protocol_responses import (
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputReasoning,
    OutputText,
    ReasoningText,
    ResponseError,
    ResponseObject,
)
from nim_server.serving.common import DONE, close_stream
from nim_server.serving.response_output import ItemStatus, finish, item_id, reasoning_of

StreamEvent = dict[str, str]
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass
class _OpenItem:
    """An output item whose events are still coming."""

    kind: str  # "message", "reasoning" or "function_call"
    index: int
    id: str
    text: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""

    def done(self, status: ItemStatus) -> OutputItem:
        text = "".join(self.text)
        if self.kind == "message":
            return OutputMessage(id=self.id, status=status, content=[OutputText(text=text)])
        if self.kind == "reasoning":
            return OutputReasoning(id=self.id, status=status, content=[ReasoningText(text=text)])
        return OutputFunctionCall(
            id=self.id, status=status, call_id=self.call_id, name=self.name, arguments=text
        )


class ResponseEventStream:
    def __init__(self, skeleton: ResponseObject) -> None:
        self._skeleton = skeleton
        self._sequence = 0
        self._items: list[OutputItem] = []
        self._open: _OpenItem | None = None

    async def run(
        self, chunks: AsyncIterator[str], on_finished: Callable[[ResponseObject], None]
    ) -> AsyncIterator[StreamEvent]:
        """The events for the chat stream `chunks`; `on_finished` gets the final response."""
        skeleton = self._skeleton.model_dump(mode="json")
        try:
            yield self._event("response.created", response=skeleton)
            yield self._event("response.in_progress", response=skeleton)
            finish_reason: str | None = None
            usage: ChatUsage | None = None
            async for payload in chunks:
                if payload == DONE:
                    break
                chunk = json.loads(payload)
                if "error" in chunk:  # the chat path's in-band error: the response failed
                    yield self._failed(chunk["error"])
                    return
                if chunk.get("usage") is not None and not chunk["choices"]:
                    usage = ChatUsage.model_validate(chunk["usage"])
                for choice in chunk["choices"]:
                    for event in self._delta(choice["delta"]):
                        yield event
                    finish_reason = choice["finish_reason"] or finish_reason
            incomplete = finish_reason == "length"
            for event in self._close("incomplete" if incomplete else "completed"):
                yield event
            final = finish(self._skeleton, self._items, incomplete, usage)
            on_finished(final)
            kind = "response.incomplete" if incomplete else "response.completed"
            yield self._event(kind, response=final.model_dump(mode="json"))
        finally:
            await close_stream(chunks)  # a client that left aborts the engine request

    def _event(self, kind: str, **fields: Any) -> StreamEvent:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return {"event": kind, "data": _encode(data)}

    def _failed(self, error: dict[str, Any]) -> StreamEvent:
        # The chat path counted the failure in the metrics already.
        failed = self._skeleton.model_copy(
            update={
                "status": "failed",
                "output": self._items,
                "error": ResponseError(code="server_error", message=str(error.get("message"))),
            }
        )
        return self._event("response.failed", response=failed.model_dump(mode="json"))

    def _delta(self, delta: dict[str, Any]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        reasoning = reasoning_of(delta)
        if reasoning:
            events += self._text("reasoning", reasoning)
        if delta.get("content"):
            events += self._text("message", delta["content"])
        for call in delta.get("tool_calls") or []:
            events += self._call(call)
        return events

    def _text(self, kind: str, text: str) -> list[StreamEvent]:
        events = [] if self._open is not None and self._open.kind == kind else self._start(kind)
        assert self._open is not None
        self._open.text.append(text)
        where = {"item_id": self._open.id, "output_index": self._open.index, "content_index": 0}
        if kind == "message":
            events.append(
                self._event("response.output_text.delta", **where, delta=text, logprobs=[])
            )
        else:
            events.append(self._event("response.reasoning_text.delta", **where, delta=text))
        return events

    def _call(self, call: dict[str, Any]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        function = call.get("function") or {}
        if call.get("id"):  # the first delta of a call names it
            events += self._start(
                "function_call", call_id=call["id"], name=function.get("name") or ""
            )
        arguments = function.get("arguments")
        if arguments and self._open is not None and self._open.kind == "function_call":
            self._open.text.append(arguments)
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=self._open.id,
                    output_index=self._open.index,
                    delta=arguments,
                )
            )
        return events

    def _start(self, kind: str, call_id: str = "", name: str = "") -> list[StreamEvent]:
        events = self._close("completed")
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind]
        item = _OpenItem(kind, len(self._items), item_id(prefix), call_id=call_id, name=name)
        self._open = item
        added = item.done("completed").model_dump(mode="json")
        added["status"] = "in_progress"
        if kind == "function_call":
            added["arguments"] = ""
        else:
            added["content"] = []
        events.append(
            self._event("response.output_item.added", output_index=item.index, item=added)
        )
        if kind != "function_call":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            if kind == "reasoning":
                part = {"type": "reasoning_text", "text": ""}
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item.id,
                    output_index=item.index,
                    content_index=0,
                    part=part,
                )
            )
        return events

    def _close(self, status: ItemStatus) -> list[StreamEvent]:
        """The closing events of the open item, if there is one."""
        item = self._open
        if item is None:
            return []
        self._open = None
        done = item.done(status)
        self._items.append(done)
        where = {"item_id": item.id, "output_index": item.index}
        events = []
        if isinstance(done, OutputFunctionCall):
            events.append(
                self._event(
                    "response.function_call_arguments.done", **where, arguments=done.arguments
                )
            )
        else:
            part = done.content[0].model_dump(mode="json")
            if isinstance(done, OutputMessage):
                events.append(
                    self._event(
                        "response.output_text.done",
                        **where,
                        content_index=0,
                        text=part["text"],
                        logprobs=[],
                    )
                )
            else:
                events.append(
                    self._event(
                        "response.reasoning_text.done", **where, content_index=0, text=part["text"]
                    )
                )
            events.append(
                self._event("response.content_part.done", **where, content_index=0, part=part)
            )
        events.append(
            self._event(
                "response.output_item.done",
                output_index=item.index,
                item=done.model_dump(mode="json"),
            )
        )
        return events
