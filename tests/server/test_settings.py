"""Settings: NIM_* variables, `nim-serve` flags, precedence, and one-line errors at start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nim_server.engine_args import executor_backend, passthrough_overrides
from nim_server.settings import LogLevel, SettingsError, load_settings
from tests.support.server_process import nim_serve_command

ALL_VARIABLES = [
    "NIM_MODEL_NAME",
    "NIM_SERVED_MODEL_NAME",
    "NIM_MAX_MODEL_LEN",
    "NIM_SERVER_PORT",
    "NIM_CACHE_PATH",
    "NIM_TENSOR_PARALLEL_SIZE",
    "NIM_GPU_MEMORY_UTILIZATION",
    "NIM_KV_CACHE_BYTES",
    "NIM_LOG_LEVEL",
    "NIM_JSONL_LOGGING",
    "NIM_API_KEY",
    "NIM_ENABLE_AUTO_TOOL_CHOICE",
    "NIM_TOOL_CALL_PARSER",
    "NIM_TOOL_PARSER_PLUGIN",
    "NIM_CHAT_TEMPLATE",
    "NIM_GUIDED_DECODING_BACKEND",
    "NIM_MODEL_PATH",
    "NIM_ENABLE_KV_CACHE_REUSE",
    "NIM_TRUST_CUSTOM_CODE",
    "NIM_TOKENIZER_MODE",
    "NIM_PASSTHROUGH_ARGS",
    "NIM_PEFT_SOURCE",
    "NIM_PEFT_REFRESH_INTERVAL",
    "NIM_MAX_LORA_RANK",
    "NIM_MAX_GPU_LORAS",
    "NIM_MAX_CPU_LORAS",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = load_settings([])
    assert settings.server_port == 8000
    assert settings.model_name is None
    assert settings.log_level is LogLevel.INFO
    assert settings.api_key is None


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = {
        "NIM_MODEL_NAME": str(tmp_path),
        "NIM_SERVED_MODEL_NAME": "meta/llama-3.1-8b-instruct",
        "NIM_MAX_MODEL_LEN": "2048",
        "NIM_SERVER_PORT": "9000",
        "NIM_CACHE_PATH": str(tmp_path / "cache"),
        "NIM_TENSOR_PARALLEL_SIZE": "2",
        "NIM_GPU_MEMORY_UTILIZATION": "0.5",
        "NIM_KV_CACHE_BYTES": "256MiB",
        "NIM_LOG_LEVEL": "debug",
        "NIM_JSONL_LOGGING": "1",
        "NIM_API_KEY": "secret",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    s = load_settings([])
    assert (s.model_name, s.served_model_name) == (str(tmp_path), "meta/llama-3.1-8b-instruct")
    assert (s.max_model_len, s.server_port, s.tensor_parallel_size) == (2048, 9000, 2)
    assert s.cache_path == tmp_path / "cache"
    assert s.gpu_memory_utilization == 0.5
    assert s.kv_cache_bytes == 256 * 1024 * 1024
    assert s.log_level is LogLevel.DEBUG
    assert s.jsonl_logging is True
    assert s.api_key is not None
    assert s.api_key.get_secret_value() == "secret"


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIM_SERVER_PORT", "9000")
    monkeypatch.setenv("NIM_JSONL_LOGGING", "true")
    settings = load_settings(
        ["--server-port", "9100", "--no-jsonl-logging", "--max-model-len", "64"]
    )
    assert settings.server_port == 9100
    assert settings.jsonl_logging is False
    assert settings.max_model_len == 64


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIM_MODEL_NAME", "")
    monkeypatch.setenv("NIM_API_KEY", " ")
    settings = load_settings([])
    assert settings.model_name is None
    assert settings.api_key is None


@pytest.mark.parametrize(
    ("env", "argv", "names"),
    [
        ({}, ["--server-port", "70000"], "NIM_SERVER_PORT / --server-port"),
        ({"NIM_MAX_MODEL_LEN": "abc"}, [], "NIM_MAX_MODEL_LEN / --max-model-len"),
        ({"NIM_GPU_MEMORY_UTILIZATION": "1.5"}, [], "NIM_GPU_MEMORY_UTILIZATION"),
        ({"NIM_MODEL_NAME": "/no/such/model"}, [], "NIM_MODEL_NAME / --model-name"),
        ({"NIM_LOG_LEVEL": "loud"}, [], "NIM_LOG_LEVEL"),
        ({"NIM_KV_CACHE_BYTES": "lots"}, [], "NIM_KV_CACHE_BYTES"),
    ],
)
def test_invalid_settings_fail_at_start_with_one_line(
    env: dict[str, str], argv: list[str], names: str
) -> None:
    result = subprocess.run(
        [*nim_serve_command(), *argv],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nim-serve: invalid settings: ")
    assert names in lines[0]


def test_api_key_is_never_echoed() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(["--api-key", "hunter2", "--server-port", "0"])
    assert "hunter2" not in str(error.value)
    assert "NIM_SERVER_PORT" in str(error.value)


def test_help_lists_every_setting() -> None:
    result = subprocess.run(
        [*nim_serve_command(), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    for name in ALL_VARIABLES:
        flag = "--" + name.removeprefix("NIM_").lower().replace("_", "-")
        assert flag in result.stdout, flag


def test_tool_and_template_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    plugin = tmp_path / "my_parser.py"
    plugin.write_text("")
    monkeypatch.setenv("NIM_ENABLE_AUTO_TOOL_CHOICE", "1")
    monkeypatch.setenv("NIM_TOOL_CALL_PARSER", "hermes")
    monkeypatch.setenv("NIM_TOOL_PARSER_PLUGIN", str(plugin))
    monkeypatch.setenv("NIM_CHAT_TEMPLATE", str(template))
    monkeypatch.setenv("NIM_GUIDED_DECODING_BACKEND", "xgrammar")
    settings = load_settings([])
    assert settings.enable_auto_tool_choice is True
    assert settings.tool_call_parser == "hermes"
    assert settings.tool_parser_plugin == plugin
    assert settings.chat_template_text() == template.read_text()
    assert settings.guided_decoding_backend == "xgrammar"
    inline = "{{ messages[0]['content'] }}"
    assert load_settings(["--chat-template", inline]).chat_template_text() == inline


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--enable-auto-tool-choice"], "NIM_TOOL_CALL_PARSER"),
        (["--tool-parser-plugin", "/no/such/plugin.py"], "NIM_TOOL_PARSER_PLUGIN"),
        (["--guided-decoding-backend", "regexes"], "NIM_GUIDED_DECODING_BACKEND"),
    ],
)
def test_tool_setting_mistakes_are_one_line(argv: list[str], named: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(argv)
    assert named in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("given", "python_level"),
    [("CRITICAL", "CRITICAL"), ("TRACE", "DEBUG"), ("DEFAULT", "INFO"), ("warning", "WARNING")],
)
def test_nim_log_levels(given: str, python_level: str) -> None:
    assert load_settings(["--log-level", given]).log_level.python_level == python_level


def test_nim_engine_contract_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NIM_MODEL_PATH", str(tmp_path))
    monkeypatch.setenv("NIM_ENABLE_KV_CACHE_REUSE", "0")
    monkeypatch.setenv("NIM_TRUST_CUSTOM_CODE", "1")
    monkeypatch.setenv("NIM_TOKENIZER_MODE", "slow")
    monkeypatch.setenv("NIM_PASSTHROUGH_ARGS", "--max-num-batched-tokens 4096")
    settings = load_settings([])
    assert settings.model == str(tmp_path)  # NIM 2.x's name for the model
    assert settings.enable_kv_cache_reuse is False
    assert settings.trust_custom_code is True
    assert settings.tokenizer_mode == "slow"
    assert passthrough_overrides(settings.passthrough_args) == {"max_num_batched_tokens": 4096}
    (tmp_path / "other").mkdir()
    with pytest.raises(SettingsError, match="NIM_MODEL_PATH"):
        load_settings(["--model-name", str(tmp_path / "other")])


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("--no-such-flag 1", "not vLLM engine arguments: --no-such-flag 1"),
        ("--max-num-seqs many", "invalid int value: 'many'"),
        ("--model other", "set NIM_MODEL_NAME instead of --model"),
        ("--served-model-name x", "set NIM_SERVED_MODEL_NAME"),
        ("'unclosed", "No closing quotation"),
    ],
)
def test_passthrough_mistakes_are_one_line(text: str, says: str) -> None:
    with pytest.raises(SettingsError) as error:
        passthrough_overrides(text)
    message = str(error.value)
    assert message.startswith("invalid settings: NIM_PASSTHROUGH_ARGS")
    assert says in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("env", "backend"),
    [
        ({}, "uni"),
        ({"NIM_TENSOR_PARALLEL_SIZE": "2"}, "mp"),
        ({"NIM_PIPELINE_PARALLEL_SIZE": "2"}, "mp"),
        # What the operator sets on every pod of a spec.multiNode group.
        (
            {
                "NIM_MULTI_NODE": "1",
                "NIM_TENSOR_PARALLEL_SIZE": "8",
                "NIM_PIPELINE_PARALLEL_SIZE": "2",
            },
            "ray",
        ),
    ],
)
def test_the_engine_workers_run_where_the_parallelism_says(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], backend: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings([])
    assert executor_backend(settings) == backend
    assert settings.pipeline_parallel_size == int(env.get("NIM_PIPELINE_PARALLEL_SIZE", "1"))
    assert settings.multi_node is ("NIM_MULTI_NODE" in env)


def test_a_nim_model_profile_is_accepted_and_said_to_be_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An operator sets NIM_MODEL_PROFILE for storage.nimCache.profile (NVIDIA's NIM images
    pick that engine build); nim-serve has none, so it starts and says it ignores it."""
    monkeypatch.setenv("NIM_MODEL_PROFILE", "vllm-bf16-tp1")
    model = tmp_path / "org--m"
    model.mkdir()
    monkeypatch.setenv("NIM_MODEL_NAME", str(model))
    settings = load_settings([])
    assert settings.model_profile == "vllm-bf16-tp1"
    notice = settings.ignored_profile_notice()
    assert notice is not None
    assert "NIM_MODEL_PROFILE=vllm-bf16-tp1 ignored" in notice
    assert str(model) in notice
    monkeypatch.delenv("NIM_MODEL_PROFILE")
    assert load_settings([]).ignored_profile_notice() is None
