"""Tool calling: what the chat template sees, what constrains decoding, how calls come out.

`tool_choice`, as OpenAI and NIM define it:
- "none": the tools still reach the chat template (it may describe them); the answer is text.
- a named function: decoding is constrained to that function's parameters (vLLM's schema from
  `get_json_schema_from_tools`), and the output is the call's arguments.
- "required": decoding is constrained to a JSON array of `{name, parameters}` (the same vLLM
  helper; one item when `parallel_tool_calls` is false), and each item is a call.
- "auto" (the default when tools are given): the model decides, and vLLM's tool-call parser for
  the model's format (NIM_TOOL_CALL_PARSER) finds the calls in what it wrote. Only when the server
  enables it (NIM_ENABLE_AUTO_TOOL_CHOICE), as in vLLM and NIM.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nim_server.errors import invalid_request
from nim_server.protocol import (
    ChatCompletionRequest,
    ChatTool,
    FunctionCall,
    NamedToolChoice,
    ToolCall,
)
from nim_server.serving.engine_request import engine_chat_request
from nim_server.serving.streamed_text import StreamedText
from nim_server.settings import Settings, SettingsError

if TYPE_CHECKING:
    from vllm.sampling_params import StructuredOutputsParams
    from vllm.tool_parsers.abstract_tool_parser import ToolParser

    from nim_server.engine import InferenceEngine

Delta = dict[str, Any]


@dataclass(frozen=True)
class ToolSettings:
    """The server's tool-calling settings (NIM_ENABLE_AUTO_TOOL_CHOICE, NIM_TOOL_CALL_PARSER)."""

    auto_enabled: bool = False
    parser: str | None = None
    plugin: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ToolSettings:
        plugin = settings.tool_parser_plugin
        return cls(
            settings.enable_auto_tool_choice,
            settings.tool_call_parser,
            str(plugin) if plugin is not None else None,
        )

    def check(self) -> None:
        """Load the plugin (NIM_TOOL_PARSER_PLUGIN) and find the parser, once at start.

        Raises SettingsError naming the parsers vLLM knows when NIM_TOOL_CALL_PARSER is none.
        """
        if self.parser is None:
            return
        from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

        if self.plugin is not None:
            ToolParserManager.import_tool_parser(self.plugin)
        try:
            ToolParserManager.get_tool_parser(self.parser)
        except KeyError:
            known = ", ".join(sorted(ToolParserManager.list_registered()))
            raise SettingsError(
                f"invalid settings: NIM_TOOL_CALL_PARSER / --tool-call-parser: no parser "
                f"{self.parser!r}; vLLM has {known}"
            ) from None


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolPlan:
    """How one request uses its tools; `extractor()` makes one per choice."""

    template_kwargs: dict[str, Any]
    constraint: StructuredOutputsParams | None = None
    named: str | None = None
    required: bool = False
    parser: type[ToolParser] | None = None
    engine_request: Any = None  # vLLM's form of the request, which its parsers read
    tokenizer: Any = None
    keep_special_tokens: bool = False

    @property
    def calls_tools(self) -> bool:
        return self.named is not None or self.required or self.parser is not None

    def extractor(self) -> CallExtractor:
        if self.named is not None:
            return NamedCall(self.named)
        if self.required:
            return RequiredCalls()
        assert self.parser is not None
        return ParsedCalls(self.parser(self.tokenizer), self.engine_request)


def plan_tools(
    request: ChatCompletionRequest, settings: ToolSettings, engine: InferenceEngine
) -> ToolPlan | None:
    """The request's tool plan, or None without tools; a 400 for what cannot work."""
    if not request.tools:
        if request.tool_choice not in (None, "none"):
            raise invalid_request("`tool_choice` needs `tools`", param="tool_choice")
        return None
    _check_tools(request.tools)
    choice = request.tool_choice or "auto"
    plan = ToolPlan(
        template_kwargs={"tools": [t.model_dump(exclude_none=True) for t in request.tools]}
    )
    if choice == "none":
        return plan
    if choice == "auto":
        return _auto(plan, request, settings, engine)
    if _has_structured_output(request):
        raise invalid_request(
            "a required or named `tool_choice` constrains the output itself: leave out "
            "`response_format`, `structured_outputs` and `guided_*`",
            param="tool_choice",
        )
    if isinstance(choice, NamedToolChoice):
        names = [tool.function.name for tool in request.tools]
        if choice.function.name not in names:
            raise invalid_request(
                f"tool_choice names `{choice.function.name}`, which is not in `tools` "
                f"({', '.join(names)})",
                param="tool_choice",
            )
        plan.named = choice.function.name
    else:
        plan.required = True
    plan.constraint = _constraint(request)
    return plan


def _check_tools(tools: Sequence[ChatTool]) -> None:
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    seen: set[str] = set()
    for index, tool in enumerate(tools):
        name = tool.function.name
        if name in seen:
            raise invalid_request(f"two tools are named `{name}`", param=f"tools.{index}")
        seen.add(name)
        parameters = tool.function.parameters
        if parameters is None:
            continue
        try:
            validator_for(parameters).check_schema(parameters)
        except SchemaError as error:
            raise invalid_request(
                f"the parameters of tool `{name}` are not a valid JSON Schema: {error.message}",
                param=f"tools.{index}.function.parameters",
            ) from None


def _has_structured_output(request: ChatCompletionRequest) -> bool:
    from nim_server.serving.structured import structured_outputs

    return structured_outputs(request) is not None


def _constraint(request: ChatCompletionRequest) -> StructuredOutputsParams:
    from vllm.sampling_params import StructuredOutputsParams
    from vllm.tool_parsers.utils import get_json_schema_from_tools

    engine_request = engine_chat_request(request, {})
    schema = get_json_schema_from_tools(
        tool_choice=engine_request.tool_choice,
        tools=engine_request.tools,
        parallel_tool_calls=request.parallel_tool_calls,
    )
    assert schema is not None  # required or named
    return StructuredOutputsParams(json=schema)


def _auto(
    plan: ToolPlan, request: ChatCompletionRequest, settings: ToolSettings, engine: InferenceEngine
) -> ToolPlan:
    if not settings.auto_enabled or settings.parser is None:
        raise invalid_request(
            'tool_choice "auto" (the default with `tools`) needs the server started with '
            "NIM_ENABLE_AUTO_TOOL_CHOICE=1 and NIM_TOOL_CALL_PARSER; send tool_choice "
            '"required", a named function or "none" instead',
            param="tool_choice",
        )
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

    plan.parser = ToolParserManager.get_tool_parser(settings.parser)
    plan.tokenizer = engine.tokenizer()
    parser = plan.parser(plan.tokenizer)
    engine_request = engine_chat_request(request, request.chat_template_kwargs or {})
    plan.engine_request = parser.adjust_request(engine_request)
    # Parsers that look for special tokens (e.g. <tool_call>) ask for them to stay in the text.
    plan.keep_special_tokens = not plan.engine_request.skip_special_tokens
    return plan


class CallExtractor:
    """Turns one choice's generated text into content and tool calls, whole or as deltas."""

    named_choice = False
    called = False  # whether a streamed choice has produced a tool call

    def result(self, text: str) -> tuple[str | None, list[ToolCall] | None]:
        raise NotImplementedError

    def feed(self, delta_text: str, delta_token_ids: Sequence[int]) -> Delta | None:
        raise NotImplementedError

    def flush(self) -> Delta | None:
        return None

    def finish_reason(self, reason: str | None, called: bool) -> str | None:
        # vLLM's convention: "tool_calls" when the model chose to call (auto, required); a
        # named choice forced the call, so it ends as "stop".
        if called and reason == "stop" and not self.named_choice:
            return "tool_calls"
        return reason


class NamedCall(CallExtractor):
    """The output is the arguments of the one named function."""

    named_choice = True

    def __init__(self, name: str) -> None:
        self._name = name
        self._id = new_call_id()
        self._started = False

    def result(self, text: str) -> tuple[str | None, list[ToolCall] | None]:
        call = ToolCall(id=self._id, function=FunctionCall(name=self._name, arguments=text))
        return None, [call]

    def feed(self, delta_text: str, delta_token_ids: Sequence[int]) -> Delta | None:
        if not self._started:
            self._started = self.called = True
            head = {"index": 0, "id": self._id, "type": "function"}
            return {
                "tool_calls": [{**head, "function": {"name": self._name, "arguments": delta_text}}]
            }
        if not delta_text:
            return None
        return {"tool_calls": [{"index": 0, "function": {"arguments": delta_text}}]}


class RequiredCalls(CallExtractor):
    """The output is a JSON array of calls; streamed whole at the end, once it parses."""

    def __init__(self) -> None:
        self._text: list[str] = []

    def result(self, text: str) -> tuple[str | None, list[ToolCall] | None]:
        try:
            items = json.loads(text)
        except ValueError:  # cut short by max_tokens: what was written stays visible
            return text, None
        calls = [
            ToolCall(
                id=new_call_id(),
                function=FunctionCall(
                    name=item["name"], arguments=json.dumps(item["parameters"], ensure_ascii=False)
                ),
            )
            for item in items
        ]
        return None, calls

    def feed(self, delta_text: str, delta_token_ids: Sequence[int]) -> Delta | None:
        self._text.append(delta_text)
        return None

    def flush(self) -> Delta | None:
        content, calls = self.result("".join(self._text))
        if calls is None:
            return {"content": content}
        self.called = True
        return {
            "tool_calls": [
                {
                    "index": index,
                    "id": call.id,
                    "type": "function",
                    "function": call.function.model_dump(),
                }
                for index, call in enumerate(calls)
            ]
        }


@dataclass
class ParsedCalls(CallExtractor):
    """auto: vLLM's parser for the model's tool-call format reads the text."""

    parser: ToolParser
    engine_request: Any
    _seen: StreamedText = field(default_factory=StreamedText)

    def result(self, text: str) -> tuple[str | None, list[ToolCall] | None]:
        extracted = self.parser.extract_tool_calls(text, self.engine_request)
        if not extracted.tools_called:
            return text, None
        calls = [
            ToolCall(
                id=call.id or new_call_id(),
                function=FunctionCall(name=call.function.name, arguments=call.function.arguments),
            )
            for call in extracted.tool_calls
        ]
        return extracted.content or None, calls

    def feed(self, delta_text: str, delta_token_ids: Sequence[int]) -> Delta | None:
        seen = self._seen
        seen.advance(delta_text, delta_token_ids)
        message = self.parser.extract_tool_calls_streaming(
            seen.previous_text,
            seen.text,
            delta_text,
            seen.previous_token_ids,
            seen.token_ids,
            delta_token_ids,
            self.engine_request,
        )
        self.called = bool(self.parser.prev_tool_call_arr)
        if message is None:
            return None
        delta: Delta = {}
        if message.content:
            delta["content"] = message.content
        if message.tool_calls:
            delta["tool_calls"] = [
                call.model_dump(exclude_none=True) for call in message.tool_calls
            ]
        return delta or None
