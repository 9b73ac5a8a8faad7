"""One chat choice's output as the client sees it: reasoning, answer text and tool calls.

The reasoning parser (if the server has one) goes first and splits the thinking off; the tool
call extractor (if the request has tools) then reads the answer part only. Without either,
the text is the content, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nim_server.protocol import ToolCall
from nim_server.serving.reasoning import ReasoningSplitter
from nim_server.serving.tools import CallExtractor

Delta = dict[str, Any]


@dataclass(frozen=True)
class Answer:
    reasoning: str | None
    content: str | None
    tool_calls: list[ToolCall] | None


@dataclass
class AnswerParser:
    reasoning: ReasoningSplitter | None = None
    calls: CallExtractor | None = None
    include_reasoning: bool = True  # False: the request asked for the answer alone
    _token_ids: list[int] = field(default_factory=list)
    _called: bool = False

    @property
    def plain(self) -> bool:
        return self.reasoning is None and self.calls is None

    def result(self, text: str, token_ids: Sequence[int]) -> Answer:
        """The whole choice, once generation has finished."""
        self._token_ids = list(token_ids)
        reasoning, content = self.reasoning.split(text) if self.reasoning else (None, text)
        tool_calls = None
        if self.calls is not None and content is not None:
            content, tool_calls = self.calls.result(content)
            self._called = tool_calls is not None
        return Answer(reasoning if self.include_reasoning else None, content, tool_calls)

    def feed(self, text: str, token_ids: Sequence[int], finished: bool) -> Delta | None:
        """The delta for one streamed output; None while a parser holds the text back."""
        self._token_ids.extend(token_ids)
        if self.plain:
            return {"content": text}
        delta: Delta = {}
        answer, answer_ids = text, token_ids
        if self.reasoning is not None:
            thinking_before = not self.reasoning.ended
            reasoning, answer = self.reasoning.feed(text, token_ids)
            if thinking_before:
                answer_ids = self.reasoning.parser.extract_content_ids(list(token_ids))
            if reasoning and self.include_reasoning:
                delta["reasoning_content"] = reasoning
        if self.calls is None:
            if answer:
                delta["content"] = answer
            return delta or None
        calls = self._tool_delta(self.calls, answer, answer_ids, finished)
        return {**delta, **calls} if delta or calls else None

    def _tool_delta(
        self, calls: CallExtractor, answer: str, answer_ids: Sequence[int], finished: bool
    ) -> Delta:
        delta = calls.feed(answer, answer_ids) if answer or answer_ids else None
        rest = calls.flush() if finished else None
        self._called = calls.called
        if delta is None or rest is None:
            return delta or rest or {}
        merged = {**delta, **rest}
        if "content" in delta and "content" in rest:
            merged["content"] = delta["content"] + rest["content"]
        return merged

    def finish_reason(self, reason: str | None) -> str | None:
        if self.calls is None:
            return reason
        return self.calls.finish_reason(reason, self._called)

    def reasoning_tokens(self) -> int | None:
        """Tokens spent thinking, or None when the server has no reasoning parser."""
        if self.reasoning is None:
            return None
        return self.reasoning.reasoning_tokens(self._token_ids)
