"""Reasoning models: what they think apart from what they answer (NIM_REASONING_PARSER).

Models such as DeepSeek-R1 or Qwen3 write their chain of thought between markers before the
answer. vLLM's reasoning parser for the model's format (the same registry `vllm serve
--reasoning-parser` uses) splits it off: the thinking goes to `reasoning_content`, the rest to
`content`, and tool calls and JSON are read from the answer part only. The engine is told the
parser too, so a structured-output constraint applies to the answer, not to the thinking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nim_server.errors import invalid_request
from nim_server.protocol import ChatCompletionRequest
from nim_server.serving.engine_request import engine_chat_request
from nim_server.serving.streamed_text import StreamedText
from nim_server.settings import Settings, SettingsError

if TYPE_CHECKING:
    from vllm.reasoning import ReasoningParser

    from nim_server.engine import InferenceEngine


@dataclass(frozen=True)
class ReasoningSettings:
    """The server's reasoning parser (NIM_REASONING_PARSER); None for models that do not think."""

    parser: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ReasoningSettings:
        return cls(settings.reasoning_parser)

    def check(self) -> None:
        """Find the parser once at start; SettingsError naming the ones vLLM has if it is none."""
        if self.parser is None:
            return
        from vllm.reasoning import ReasoningParserManager

        if self.parser not in ReasoningParserManager.list_registered():
            known = ", ".join(ReasoningParserManager.list_registered())
            raise SettingsError(
                f"invalid settings: NIM_REASONING_PARSER / --reasoning-parser: no parser "
                f"{self.parser!r}; vLLM has {known}"
            )


@dataclass
class ReasoningPlan:
    """How one request's output is split; `splitter()` makes one per choice."""

    parser_cls: type[ReasoningParser]
    tokenizer: Any
    engine_request: Any  # vLLM's form of the request, which its parsers read
    parser_kwargs: dict[str, Any]
    include: bool  # False: the request asked for the answer alone (`include_reasoning`)
    keep_special_tokens: bool
    ended_in_prompt: bool = False  # the template closed the thinking (e.g. enable_thinking off)
    prompt_token_ids: list[int] = field(default_factory=list)

    def new_parser(self) -> ReasoningParser:
        return self.parser_cls(self.tokenizer, **self.parser_kwargs)

    def read_prompt(self, prompt_token_ids: Sequence[int]) -> None:
        self.prompt_token_ids = list(prompt_token_ids)
        self.ended_in_prompt = self.new_parser().is_reasoning_end(self.prompt_token_ids)

    def splitter(self) -> ReasoningSplitter:
        parser = self.new_parser()
        if not self.ended_in_prompt:
            parser.adjust_initial_state_from_prompt(self.prompt_token_ids)
        return ReasoningSplitter(parser, self.engine_request, thinks=not self.ended_in_prompt)


def plan_reasoning(
    request: ChatCompletionRequest,
    settings: ReasoningSettings,
    engine: InferenceEngine,
    template_kwargs: dict[str, Any],
) -> ReasoningPlan | None:
    """The request's reasoning plan, or None when the server has no reasoning parser."""
    if settings.parser is None:
        if request.reasoning_effort is not None:
            raise invalid_request(
                "`reasoning_effort` needs a reasoning model: this server runs without a "
                "reasoning parser (NIM_REASONING_PARSER); leave it out",
                param="reasoning_effort",
            )
        return None
    from vllm.reasoning import ReasoningParserManager

    parser_cls = ReasoningParserManager.get_reasoning_parser(settings.parser)
    tokenizer = engine.tokenizer()
    parser_kwargs = {"chat_template_kwargs": template_kwargs}
    engine_request = engine_chat_request(request, template_kwargs)
    engine_request = parser_cls(tokenizer, **parser_kwargs).adjust_request(engine_request)
    return ReasoningPlan(
        parser_cls=parser_cls,
        tokenizer=tokenizer,
        engine_request=engine_request,
        parser_kwargs=parser_kwargs,
        include=request.include_reasoning,
        # Parsers whose markers are special tokens ask for them to stay in the text.
        keep_special_tokens=not engine_request.skip_special_tokens,
    )


@dataclass
class ReasoningSplitter:
    """One choice's output split into (reasoning, answer), whole or delta by delta."""

    parser: ReasoningParser
    engine_request: Any
    thinks: bool  # False when the prompt already closed the thinking
    ended: bool = False
    _seen: StreamedText = field(default_factory=StreamedText)

    def __post_init__(self) -> None:
        self.ended = not self.thinks

    def split(self, text: str) -> tuple[str | None, str | None]:
        if not self.thinks:
            return None, text
        return self.parser.extract_reasoning(text, self.engine_request)

    def feed(self, delta_text: str, delta_token_ids: Sequence[int]) -> tuple[str | None, str]:
        """(reasoning, answer) of one delta; the answer part is "" while the model thinks."""
        if self.ended:
            return None, delta_text
        seen = self._seen
        seen.advance(delta_text, delta_token_ids)
        message = self.parser.extract_reasoning_streaming(
            seen.previous_text,
            seen.text,
            delta_text,
            seen.previous_token_ids,
            seen.token_ids,
            delta_token_ids,
        )
        reasoning = message.reasoning if message is not None else None
        answer = (message.content if message is not None else None) or ""
        if self._reasoning_ended(delta_token_ids):
            self.ended = True
            if self.parser.engine_based_streaming:
                # Parsers built on vLLM's parser engine hold back text after the end marker.
                rest = self.parser.finish_streaming()  # type: ignore[attr-defined]
                answer += (rest.content if rest is not None else None) or ""
        return reasoning, answer

    def _reasoning_ended(self, delta_token_ids: Sequence[int]) -> bool:
        if self.parser.engine_based_streaming:
            return self.parser.has_engine_confirmed_reasoning_end()
        return self.parser.is_reasoning_end_streaming(self._seen.token_ids, delta_token_ids)

    def reasoning_tokens(self, token_ids: Sequence[int]) -> int:
        if not self.thinks:
            return 0  # the prompt closed the thinking: all of the output is the answer
        return self.parser.count_reasoning_tokens(token_ids)
