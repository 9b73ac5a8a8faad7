"""Server settings: the NIM environment contract, each variable also a `nim-serve` flag.

Precedence follows NIM 2.x: command-line flag > environment variable > default.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import (
    ByteSize,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "NIM_"
DEFAULT_CACHE_PATH = Path("/opt/nim/.cache")


class LogLevel(StrEnum):
    """NIM_LOG_LEVEL: Python's levels plus the names NIM also accepts (TRACE, DEFAULT)."""

    TRACE = "TRACE"  # NIM's most verbose level; Python's DEBUG is the most there is
    DEBUG = "DEBUG"
    INFO = "INFO"
    DEFAULT = "DEFAULT"  # NIM's name for its default, INFO
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"

    @property
    def python_level(self) -> str:
        return {LogLevel.TRACE: "DEBUG", LogLevel.DEFAULT: "INFO"}.get(self, self.value)


class GuidedDecodingBackend(StrEnum):
    """vLLM's structured-output backends (NIM_GUIDED_DECODING_BACKEND)."""

    AUTO = "auto"
    XGRAMMAR = "xgrammar"
    GUIDANCE = "guidance"
    OUTLINES = "outlines"
    LM_FORMAT_ENFORCER = "lm-format-enforcer"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        cli_kebab_case=True,
        cli_prog_name="nim-serve",
        cli_implicit_flags=True,
        cli_avoid_json=True,
        frozen=True,
    )

    model_name: Annotated[
        str | None,
        Field(
            description="Local model directory (Hugging Face layout) or GGUF file. "
            "Empty: the embedded SmolLM2-135M-Instruct default.",
        ),
    ] = None
    model_path: Annotated[
        str | None,
        Field(description="NIM 2.x's name for NIM_MODEL_NAME; give one of the two."),
    ] = None
    model_profile: Annotated[
        str | None,
        Field(
            description="NVIDIA NIM's model profile (an engine build NIM downloads). nim-serve "
            "has no profiles: one given is logged and ignored, and the model is served as "
            "NIM_MODEL_NAME names it.",
        ),
    ] = None
    served_model_name: Annotated[
        str | None,
        Field(description="Model id clients send in `model` (default: derived from the model)."),
    ] = None
    max_model_len: Annotated[
        int | None, Field(ge=1, description="Context window in tokens (default: the model's).")
    ] = None
    server_host: Annotated[str, Field(description="Address to listen on.")] = "0.0.0.0"
    server_port: Annotated[int, Field(ge=1, le=65535, description="HTTP port.")] = 8000
    cache_path: Annotated[
        Path, Field(description="Writable cache for prepared models and downloads.")
    ] = DEFAULT_CACHE_PATH
    tensor_parallel_size: Annotated[
        int, Field(ge=1, le=64, description="Number of GPUs the model is split over.")
    ] = 1
    pipeline_parallel_size: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description="Number of stages the model's layers are split into (one per node when "
            "multi-node).",
        ),
    ] = 1
    multi_node: Annotated[
        bool,
        Field(
            description="Run the engine's workers on a Ray cluster spanning several nodes (the "
            "operator starts it for spec.multiNode); otherwise they run in this container.",
        ),
    ] = False
    gpu_memory_utilization: Annotated[
        float, Field(gt=0, le=1, description="Fraction of GPU memory the engine may use.")
    ] = 0.9
    kv_cache_bytes: Annotated[
        ByteSize | None,
        Field(description="KV-cache size, e.g. 512MiB (default on CPU: 512MiB; on GPU: derived)."),
    ] = None
    max_num_seqs: Annotated[
        int | None, Field(ge=1, description="Most sequences the engine runs at once.")
    ] = None
    max_queue: Annotated[
        int,
        Field(
            ge=0,
            description="Most requests that may wait for an engine slot; beyond it new requests "
            "get 429 with Retry-After.",
        ),
    ] = 256
    shutdown_timeout: Annotated[
        float,
        Field(
            ge=0,
            description="Seconds in-flight requests may take to finish after SIGTERM.",
        ),
    ] = 30.0
    max_request_bytes: Annotated[
        ByteSize, Field(ge=1024, description="Largest request body accepted (413 beyond).")
    ] = ByteSize(8 * 1024 * 1024)
    responses_store_bytes: Annotated[
        ByteSize,
        Field(
            ge=0,
            description="Memory for responses kept for GET /v1/responses/{id} and "
            "previous_response_id, per replica; least recently used go first.",
        ),
    ] = ByteSize(64 * 1024 * 1024)
    enable_auto_tool_choice: Annotated[
        bool,
        Field(
            description="Allow tool_choice 'auto' (needs a tool-call parser for the model's "
            "tool-call format)."
        ),
    ] = False
    tool_call_parser: Annotated[
        str | None,
        Field(description="vLLM tool-call parser for 'auto', e.g. llama3_json, hermes, mistral."),
    ] = None
    tool_parser_plugin: Annotated[
        Path | None,
        Field(description="A Python file registering more tool-call parsers with vLLM."),
    ] = None
    reasoning_parser: Annotated[
        str | None,
        Field(
            description="vLLM reasoning parser for the model's thinking markers, e.g. "
            "deepseek_r1, qwen3: the thinking goes to `reasoning_content`."
        ),
    ] = None
    chat_template: Annotated[
        str | None,
        Field(description="Chat template (a file, or Jinja text) instead of the tokenizer's."),
    ] = None
    enable_kv_cache_reuse: Annotated[
        bool | None,
        Field(description="Reuse the KV cache of shared prompt prefixes (default: the engine's)."),
    ] = None
    trust_custom_code: Annotated[
        bool, Field(description="Run the model repository's own Python code (trust_remote_code).")
    ] = False
    tokenizer_mode: Annotated[
        str | None, Field(description="vLLM tokenizer mode: auto, slow, mistral, custom.")
    ] = None
    passthrough_args: Annotated[
        str | None,
        Field(
            description="More vLLM engine arguments, as on its command line "
            "(e.g. '--max-num-batched-tokens 4096'); they win over the settings above."
        ),
    ] = None
    guided_decoding_backend: Annotated[
        GuidedDecodingBackend,
        Field(
            description="Grammar engine for structured outputs (response_format, guided_*): "
            "auto lets vLLM choose per request."
        ),
    ] = GuidedDecodingBackend.AUTO
    peft_source: Annotated[
        Path | None,
        Field(
            description="Directory of LoRA adapters, one sub-directory each (adapter_config.json "
            "and weights), each served as a model id named after its sub-directory."
        ),
    ] = None
    peft_refresh_interval: Annotated[
        float | None,
        Field(
            gt=0,
            description="Seconds between rescans of NIM_PEFT_SOURCE for added, changed and "
            "removed adapters (default: scanned once at start).",
        ),
    ] = None
    max_lora_rank: Annotated[
        int, Field(ge=1, le=512, description="Highest LoRA rank an adapter may have.")
    ] = 32
    max_gpu_loras: Annotated[
        int, Field(ge=1, description="Most LoRA adapters the engine applies in one batch.")
    ] = 8
    max_cpu_loras: Annotated[
        int,
        Field(
            ge=1,
            description="Most LoRA adapters kept loaded in host memory; the others are read "
            "from NIM_PEFT_SOURCE again when requested.",
        ),
    ] = 16
    log_level: Annotated[LogLevel, Field(description="Log level.")] = LogLevel.INFO
    jsonl_logging: Annotated[bool, Field(description="Log one JSON object per line.")] = False
    api_key: Annotated[
        SecretStr | None,
        Field(description="If set, /v1/* (except health and metrics) needs `Bearer <key>`."),
    ] = None

    @field_validator(
        "model_name",
        "model_path",
        "served_model_name",
        "tokenizer_mode",
        "passthrough_args",
        "api_key",
        "tool_call_parser",
        "tool_parser_plugin",
        "reasoning_parser",
        "chat_template",
        "peft_source",
        "peft_refresh_interval",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An operator or a shell often exports an empty variable to mean "not set".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("model_name", "model_path")
    @classmethod
    def _local_model_exists(cls, value: str | None) -> str | None:
        # Anything that looks like a path must exist; a bare id (org/name) is left to the
        # engine, which may fetch it in a cluster that allows downloads.
        if value is not None and value.startswith(("/", ".", "~")):
            path = Path(value).expanduser()
            if not path.exists():
                raise ValueError(f"no such file or directory: {path}")
        return value

    @field_validator("tool_parser_plugin")
    @classmethod
    def _plugin_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("peft_source")
    @classmethod
    def _peft_source_is_a_directory(cls, value: Path | None) -> Path | None:
        # A mistyped path would otherwise serve no adapters without saying why.
        if value is not None and not value.is_dir():
            raise ValueError(f"no such directory: {value}")
        return value

    @model_validator(mode="after")
    def _cpu_loras_hold_gpu_loras(self) -> Settings:
        # Adapters in a batch are also held in host memory: the engine refuses fewer.
        if self.max_cpu_loras < self.max_gpu_loras:
            raise ValueError(
                f"NIM_MAX_CPU_LORAS ({self.max_cpu_loras}) must be at least "
                f"NIM_MAX_GPU_LORAS ({self.max_gpu_loras})"
            )
        return self

    @model_validator(mode="after")
    def _auto_tool_choice_needs_a_parser(self) -> Settings:
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError(
                "NIM_ENABLE_AUTO_TOOL_CHOICE needs NIM_TOOL_CALL_PARSER: the parser for the "
                "model's tool-call format"
            )
        return self

    @model_validator(mode="after")
    def _one_model(self) -> Settings:
        if self.model_name and self.model_path and self.model_name != self.model_path:
            raise ValueError(
                "NIM_MODEL_NAME and NIM_MODEL_PATH name different models; give one of the two"
            )
        return self

    @property
    def model(self) -> str | None:
        """The model to serve: NIM_MODEL_NAME (NIM 1.x) or NIM_MODEL_PATH (NIM 2.x)."""
        return self.model_name or self.model_path

    def ignored_profile_notice(self) -> str | None:
        """What the server logs at start when NIM_MODEL_PROFILE is set (an operator sets it for
        storage.nimCache.profile, as for NVIDIA's NIM images): said, not silently dropped."""
        if not self.model_profile:
            return None
        return (
            f"NIM_MODEL_PROFILE={self.model_profile} ignored: nim-serve has no NIM model "
            f"profiles and serves {self.model or 'the embedded default model'} as it is"
        )

    def chat_template_text(self) -> str | None:
        """The chat template's text: the file NIM_CHAT_TEMPLATE names, or the value itself."""
        if self.chat_template is None:
            return None
        path = Path(self.chat_template).expanduser()
        if "{" not in self.chat_template and path.is_file():
            return path.read_text()
        return self.chat_template


class SettingsError(Exception):
    """Invalid settings, rendered as one line naming the variable and the flag."""


def describe_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        if not item["loc"]:  # a rule across settings: its message names them
            parts.append(str(item["msg"]).removeprefix("Value error, "))
            continue
        field = str(item["loc"][0])
        env = ENV_PREFIX + field.upper()
        flag = "--" + field.replace("_", "-")
        value = item.get("input")
        shown = "" if field == "api_key" else f" (got {value!r})"
        parts.append(f"{env} / {flag}: {item['msg']}{shown}")
    return "invalid settings: " + "; ".join(parts)


def load_settings(argv: list[str] | None = None) -> Settings:
    """Read settings from flags and the environment; raise SettingsError with one clear line."""
    try:
        return Settings(_cli_parse_args=argv if argv is not None else [])
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None


def default_cache_path(settings: Settings) -> Path:
    """The configured cache, or a per-user one when the NIM default is not writable here."""
    path = settings.cache_path.expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    if settings.cache_path != DEFAULT_CACHE_PATH:
        # The user chose this path: falling back silently would hide their mistake.
        raise SettingsError(
            f"invalid settings: NIM_CACHE_PATH / --cache-path: {path} is not writable"
        )
    fallback = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nim"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback
