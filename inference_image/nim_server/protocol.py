"""Wire models of the OpenAI-compatible API, as NIM and vLLM clients send and expect them.

Requests validate every bound the server enforces, so one pydantic error becomes one 400 naming
the parameter. Unknown request fields are ignored (clients such as LangChain send extras), except
the fields that would change the output and that this server does not honour (UNHONOURED): a
client that sets one gets a 400 naming it, not an answer that silently ignored it.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

# Upper bounds that keep one request from monopolising the engine.
MAX_CHOICES = 16
MAX_STOP_SEQUENCES = 16
MAX_LOGPROBS = 20
MAX_MESSAGES = 2048

# Fields some OpenAI-compatible servers take that change what is generated, with the value that
# changes nothing; any other value is refused with a 400 naming the field.
UNHONOURED: dict[str, object] = {
    "use_beam_search": False,
    "length_penalty": 1.0,
    "reasoning_effort": None,  # chat takes it when the server has a reasoning parser
    "allowed_token_ids": None,
    "bad_words": None,
    "logits_processors": None,
    "truncate_prompt_tokens": None,
    "prediction": None,
    "guided_decoding_backend": None,
    # vLLM takes whitespace rules from its engine configuration only.
    "guided_whitespace_pattern": None,
}


def param_error(param: str, message: str) -> PydanticCustomError:
    """A validation error that names the offending request parameter (for the 400's `param`)."""
    return PydanticCustomError("invalid_parameter", message, {"param": param})


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TopLevelRequest(RequestModel):
    """A request body: refuses the output-changing fields it would otherwise ignore."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unhonoured_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, neutral in UNHONOURED.items():
                # A request model that declares one of these fields honours it.
                if name not in cls.model_fields and data.get(name, neutral) != neutral:
                    raise param_error(
                        name, f"`{name}` is not supported by this server; leave it out"
                    )
        return data


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----- shared request pieces -------------------------------------------------------------------

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
StopSequences = str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)]


class StreamOptions(RequestModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class JsonSchemaFormat(RequestModel):
    name: str = "response"
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None


class ResponseFormat(RequestModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and (
            self.json_schema is None or self.json_schema.schema_ is None
        ):
            raise param_error(
                "response_format.json_schema.schema",
                "`json_schema.schema` is required when type is 'json_schema'",
            )
        return self


class GuidedFields(RequestModel):
    """NIM 1.x's structured-generation fields, top level or inside `nvext`."""

    guided_json: dict[str, Any] | str | None = None
    guided_regex: Annotated[str, Field(min_length=1)] | None = None
    guided_choice: Annotated[list[str], Field(min_length=1)] | None = None
    guided_grammar: Annotated[str, Field(min_length=1)] | None = None


class NvExt(GuidedFields):
    """NIM's `nvext` extension object: everything in it steers generation, so no key is ignored."""

    model_config = ConfigDict(extra="forbid")

    top_k: Annotated[int, Field(ge=-1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None
    ignore_eos: bool | None = None


class StructuredOutputs(RequestModel):
    """vLLM's `structured_outputs`: one constraint.

    Its whitespace options are left out (so refused): vLLM 0.32 reads them from the engine's
    configuration, not from the request.
    """

    model_config = ConfigDict(extra="forbid")

    json_: Annotated[dict[str, Any] | str | None, Field(alias="json")] = None
    regex: Annotated[str, Field(min_length=1)] | None = None
    choice: Annotated[list[str], Field(min_length=1)] | None = None
    grammar: Annotated[str, Field(min_length=1)] | None = None
    json_object: bool | None = None


class SamplingFields(TopLevelRequest, GuidedFields):
    """Sampling parameters shared by chat and text completions (OpenAI plus vLLM extras)."""

    model: str | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    stop: StopSequences | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM extras.
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Probability | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0)] = 0
    stop_token_ids: Annotated[list[int], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # Structured outputs, in each shape clients send (serving/structured.py picks the one given).
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    nvext: NvExt | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise param_error(
                "stream_options", "`stream_options` is only allowed when `stream` is true"
            )
        return self


# ----- chat completions ------------------------------------------------------------------------


class ContentPart(RequestModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


# OpenAI's limits on function names and on the number of tools in one request.
FUNCTION_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_TOOLS = 128


class FunctionDefinition(RequestModel):
    name: Annotated[str, Field(pattern=FUNCTION_NAME_PATTERN)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(RequestModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(RequestModel):
    name: str


class NamedToolChoice(RequestModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    tools: Annotated[list[ChatTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    # Reasoning models (NIM_REASONING_PARSER): the effort goes to the chat template, as in
    # vLLM; `include_reasoning: false` leaves `reasoning_content` out of the answer.
    reasoning_effort: ReasoningEffort | None = None
    include_reasoning: bool = True

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise param_error("top_logprobs", "`top_logprobs` requires `logprobs` to be true")
        return self

    @property
    def output_limit(self) -> int | None:
        # OpenAI renamed max_tokens to max_completion_tokens; LiteLLM sends either.
        return self.max_completion_tokens or self.max_tokens


class ChatLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(ChatLogprob):
    top_logprobs: list[ChatLogprob]


class ChatChoiceLogprobs(ResponseModel):
    content: list[ChatTokenLogprob] | None


class FunctionCall(ResponseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(ResponseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    # What a reasoning model thought before answering (NIM's name for it); only with a parser.
    reasoning_content: Annotated[str | None, Field(exclude_if=lambda v: v is None)] = None
    # Present only when the model called tools, as in OpenAI's responses.
    tool_calls: Annotated[list[ToolCall] | None, Field(exclude_if=lambda v: v is None)] = None


class ChatChoice(ResponseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None
    stop_reason: int | str | None = None


class PromptTokensDetails(ResponseModel):
    cached_tokens: int  # prompt tokens served from the engine's prefix cache


class CompletionTokensDetails(ResponseModel):
    reasoning_tokens: int  # generated tokens the model spent thinking (reasoning models)


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: Annotated[
        PromptTokensDetails | None, Field(exclude_if=lambda v: v is None)
    ] = None
    completion_tokens_details: Annotated[
        CompletionTokensDetails | None, Field(exclude_if=lambda v: v is None)
    ] = None


class ChatCompletionResponse(ResponseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class DeltaFunctionCall(ResponseModel):
    name: Annotated[str | None, Field(exclude_if=lambda v: v is None)] = None
    arguments: Annotated[str | None, Field(exclude_if=lambda v: v is None)] = None


class DeltaToolCall(ResponseModel):
    """A piece of a streamed tool call: the first of a call has id, type and name."""

    index: int
    id: Annotated[str | None, Field(exclude_if=lambda v: v is None)] = None
    type: Annotated[Literal["function"] | None, Field(exclude_if=lambda v: v is None)] = None
    function: DeltaFunctionCall


class DeltaMessage(ResponseModel):
    # Only the first chunk of a choice names the role; later ones leave the key out.
    role: Annotated[Literal["assistant"] | None, Field(exclude_if=lambda v: v is None)] = None
    content: str | None = None
    reasoning_content: Annotated[str | None, Field(exclude_if=lambda v: v is None)] = None
    tool_calls: Annotated[list[DeltaToolCall] | None, Field(exclude_if=lambda v: v is None)] = None


class ChatChunkChoice(ResponseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# ----- text completions ------------------------------------------------------------------------

TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    )
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None

    @property
    def prompt_count(self) -> int:
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return 1
        return len(self.prompt)

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        if self.suffix:
            raise param_error(
                "suffix", "`suffix` (fill-in-the-middle) is not supported by this server"
            )
        if self.best_of is not None and self.best_of != self.n:
            raise param_error("best_of", "`best_of` other than `n` is not supported by this server")
        return self


class CompletionLogprobs(ResponseModel):
    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(ResponseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None
    stop_reason: int | str | None = None


class CompletionResponse(ResponseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None
    system_fingerprint: str | None = None


# ----- tokenize / detokenize (vLLM's shapes) ------------------------------------------------


class TokenizeRequest(RequestModel):
    """A text prompt, or a conversation rendered with the chat template first."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)] | None = (
        None
    )
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise param_error("prompt", "give exactly one of `prompt` and `messages`")
        return self


class TokenizeResponse(ResponseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]


class DetokenizeResponse(ResponseModel):
    prompt: str


# ----- models, health, management, errors -------------------------------------------------------


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str
    parent: str | None = None
    max_model_len: int


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthResponse(ResponseModel):
    object: Literal["health.response"] = "health.response"
    message: str
    status: Literal["ready", "alive"]


class VersionResponse(ResponseModel):
    release: str
    api: str


class ModelInfo(ResponseModel):
    modelUrl: str
    shortName: str


class MetadataResponse(ResponseModel):
    version: str
    modelInfo: list[ModelInfo]
    repository_override: str | None = None
    assetInfo: list[str] = Field(default_factory=list)
    licenseInfo: dict[str, str] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
