"""Wire models of OpenAI's Responses API (`/v1/responses`), as the openai and Agents SDKs send it.

A Responses request is answered through the chat path (serving/responses.py translates it), so
this module only says what may come in and what goes out. Fields that would change the answer
and that the chat path cannot honour (built-in tools, `background`, reasoning effort, `include`
values, ...) are refused with a 400 naming them, as protocol.py does for chat.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from nim_server.protocol import (
    FUNCTION_NAME_PATTERN,
    MAX_MESSAGES,
    MAX_TOOLS,
    RequestModel,
    ResponseModel,
    param_error,
)

# OpenAI's limits on `metadata`.
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512

# Request fields with the value that changes nothing; any other value is a 400 naming the field.
RESPONSES_UNHONOURED: dict[str, tuple[object, ...]] = {
    "background": (None, False),  # no background queue: every response is answered in the call
    "conversation": (None,),  # no Conversations API; chain with previous_response_id
    "prompt": (None,),  # no stored prompt templates
    "context_management": (None,),  # no server-side compaction
    "truncation": (None, "disabled"),  # "auto" would drop input; ours fails with a 400 instead
    "top_logprobs": (None, 0),
    "moderation": (None,),
    "include": (None, []),  # none of the includable extras is produced
}

# Input content parts that carry text; anything else (images, files, audio) is refused.
TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal"})


# ----- request -----------------------------------------------------------------------------


class ContentPart(RequestModel):
    type: str
    text: str | None = None
    refusal: str | None = None

    @property
    def as_text(self) -> str | None:
        """The part's text, or None when it is not a text part."""
        if self.type not in TEXT_PARTS:
            return None
        return self.refusal if self.type == "refusal" else self.text


Content = str | list[ContentPart]


class MessageItem(RequestModel):
    """A message; `type` may be left out (OpenAI's "easy input message")."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Content


class FunctionCallItem(RequestModel):
    """A call the model made earlier (sent back so the model sees its own call)."""

    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1)]
    name: str
    arguments: str


class FunctionCallOutputItem(RequestModel):
    """What a function returned for `call_id`."""

    type: Literal["function_call_output"]
    call_id: Annotated[str, Field(min_length=1)]
    output: Content


class ReasoningItem(RequestModel):
    """Earlier reasoning; chat templates leave it out of the prompt, and so does this server."""

    type: Literal["reasoning"]


def _item_type(item: Any) -> str:
    if isinstance(item, dict):
        return str(item.get("type", "message"))
    return str(getattr(item, "type", "message"))


INPUT_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")

InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_type),
]


class FunctionTool(RequestModel):
    """A function tool, in the Responses shape (flat: no nested `function` object)."""

    type: Literal["function"]
    name: Annotated[str, Field(pattern=FUNCTION_NAME_PATTERN)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(RequestModel):
    type: Literal["function"]
    name: str


ToolChoice = Literal["none", "auto", "required"] | FunctionChoice


class TextFormat(RequestModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise param_error(
                "text.format.schema", "`text.format.schema` is required for type 'json_schema'"
            )
        return self


class TextConfig(RequestModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None

    @field_validator("verbosity")
    @classmethod
    def _default_verbosity_only(cls, value: str | None) -> str | None:
        if value not in (None, "medium"):  # "medium" is OpenAI's default: it changes nothing
            raise param_error("text.verbosity", "`text.verbosity` is not supported; leave it out")
        return value


class ReasoningConfig(RequestModel):
    """`effort` goes to the chat path's `reasoning_effort` (honoured with a reasoning parser, a
    400 without one); reasoning summaries cannot be produced, and nothing else is ignored."""

    model_config = ConfigDict(extra="forbid")

    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None

    @model_validator(mode="after")
    def _no_summaries(self) -> ReasoningConfig:
        for name in ("summary", "generate_summary"):
            if getattr(self, name) is not None:
                raise param_error(
                    f"reasoning.{name}", "reasoning summaries are not supported; leave it out"
                )
        return self


class SamplingExtras(RequestModel):
    """Chat sampling fields that vLLM's Responses API also takes (clients send them in the SDK's
    `extra_body`). Passed to the chat request as they are, which checks them: ignoring them
    would change the answer silently."""

    logit_bias: Any = None
    top_k: Any = None
    min_p: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    repetition_penalty: Any = None
    seed: Any = None
    stop: Any = None
    min_tokens: Any = None
    ignore_eos: Any = None
    skip_special_tokens: Any = None
    include_stop_str_in_output: Any = None


SAMPLING_EXTRAS = frozenset(SamplingExtras.model_fields)


class ResponseCreateRequest(SamplingExtras):
    model: str | None = None
    input: Annotated[
        Annotated[Annotated[str, Field(min_length=1)], Tag("text")]
        | Annotated[
            Annotated[list[InputItem], Field(min_length=1, max_length=MAX_MESSAGES)], Tag("items")
        ],
        # Errors from the shape that was sent only, not "should be a valid string" for a list.
        Discriminator(lambda value: "items" if isinstance(value, list) else "text"),
    ]
    instructions: str | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None  # counts built-in tool calls only
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    stream: bool = False
    store: bool = True  # OpenAI's default
    previous_response_id: Annotated[str, Field(min_length=1)] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unhonoured_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, neutral in RESPONSES_UNHONOURED.items():
            if name in data and data[name] not in neutral:
                raise param_error(name, f"`{name}` is not supported by this server; leave it out")
        return data

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools_only(cls, tools: Any) -> Any:
        for index, tool in enumerate(tools if isinstance(tools, list) else []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise param_error(
                    f"tools.{index}.type",
                    f"tool type {kind!r} is not supported: this server runs no built-in tools, "
                    "only `function` tools that the client executes",
                )
        return tools

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _function_choice_only(cls, choice: Any) -> Any:
        if isinstance(choice, dict) and choice.get("type") != "function":
            raise param_error(
                "tool_choice",
                f"tool_choice type {choice.get('type')!r} is not supported; use 'none', 'auto', "
                "'required' or {'type': 'function', 'name': ...}",
            )
        return choice

    @field_validator("input", mode="before")
    @classmethod
    def _known_items(cls, items: Any) -> Any:
        for index, item in enumerate(items if isinstance(items, list) else []):
            kind = _item_type(item)
            if kind not in INPUT_ITEM_TYPES:
                raise param_error(
                    f"input.{index}.type",
                    f"input item type {kind!r} is not supported; this server takes "
                    + ", ".join(INPUT_ITEM_TYPES),
                )
        return items

    @field_validator("metadata")
    @classmethod
    def _metadata_bounds(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_KEYS:
            raise param_error("metadata", f"`metadata` takes at most {MAX_METADATA_KEYS} keys")
        for key, text in value.items():
            if len(key) > MAX_METADATA_KEY_CHARS or len(text) > MAX_METADATA_VALUE_CHARS:
                raise param_error(
                    f"metadata.{key[:MAX_METADATA_KEY_CHARS]}",
                    f"`metadata` keys are at most {MAX_METADATA_KEY_CHARS} characters and values "
                    f"at most {MAX_METADATA_VALUE_CHARS}",
                )
        return value


# ----- response ----------------------------------------------------------------------------


class OutputText(ResponseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(ResponseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class OutputFunctionCall(ResponseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    status: Literal["in_progress", "completed", "incomplete"]
    call_id: str
    name: str
    arguments: str


class ReasoningText(ResponseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class OutputReasoning(ResponseModel):
    id: str
    type: Literal["reasoning"] = "reasoning"
    status: Literal["in_progress", "completed", "incomplete"]
    summary: list[Any] = Field(default_factory=list)
    content: list[ReasoningText]


OutputItem = OutputReasoning | OutputMessage | OutputFunctionCall


class InputTokensDetails(ResponseModel):
    cached_tokens: int
    cache_write_tokens: int = 0  # the prefix cache fills on its own; nothing is "written"


class OutputTokensDetails(ResponseModel):
    reasoning_tokens: int = 0  # the engine does not count reasoning tokens apart


class ResponseUsage(ResponseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(ResponseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(ResponseModel):
    code: str
    message: str


class ResponseObject(ResponseModel):
    """A response as OpenAI returns it: echoes the request's settings next to the output."""

    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    completed_at: int | None = None
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    background: bool = False
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class DeletedResponse(ResponseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True


def without_item_tags(param: str | None) -> str | None:
    """`input.items.0.function_call.name` -> `input.0.name`: pydantic puts union tags in paths."""
    if param is None or not param.startswith("input."):
        return param
    parts = param.split(".")
    if parts[1] in ("items", "text"):
        del parts[1]
    if len(parts) > 2 and parts[2] in INPUT_ITEM_TYPES:
        del parts[2]
    return ".".join(parts)
