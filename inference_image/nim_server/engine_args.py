"""NIM_PASSTHROUGH_ARGS: more vLLM engine arguments, parsed by vLLM's own argument parser."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import shlex
from typing import Any

from nim_server.settings import Settings, SettingsError

_SETTING = "NIM_PASSTHROUGH_ARGS / --passthrough-args"
# What the NIM settings own: passing them through would serve something else than /v1/models says.
_OWNED = {
    "model": "NIM_MODEL_NAME",
    "served_model_name": "NIM_SERVED_MODEL_NAME",
    "download_dir": "NIM_CACHE_PATH",
}


def executor_backend(settings: Settings) -> str:
    """Where vLLM runs its workers: on the Ray cluster of a multi-node group, in processes of
    this container when there are several GPUs, else in this process."""
    if settings.multi_node:
        return "ray"
    single = settings.tensor_parallel_size == 1 and settings.pipeline_parallel_size == 1
    return "uni" if single else "mp"


def passthrough_overrides(text: str | None) -> dict[str, Any]:
    """The engine arguments `text` sets to other than vLLM's defaults; SettingsError if invalid."""
    return dict(_parsed(text)) if text else {}


# Parsed once per process: `nim-serve` checks the setting at start and applies it at model load,
# and building vLLM's parser (some 300 arguments) each time would be the same work twice.
@functools.cache
def _parsed(text: str) -> dict[str, Any]:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(exit_on_error=False)  # type: ignore[no-untyped-call]
    AsyncEngineArgs.add_cli_args(parser)
    problem = ""
    try:
        words = shlex.split(text)
        defaults = vars(parser.parse_args([]))
        with contextlib.redirect_stderr(io.StringIO()) as errors:
            parsed, unknown = parser.parse_known_args(words)  # type: ignore[no-untyped-call]
        given = vars(parsed)
        if unknown:
            problem = f"not vLLM engine arguments: {' '.join(unknown)}"
    except (ValueError, argparse.ArgumentError) as error:
        problem = str(error)
    except SystemExit:
        problem = errors.getvalue().strip().splitlines()[-1]
    if problem:
        raise SettingsError(f"invalid settings: {_SETTING}: {problem}")
    overrides = {name: value for name, value in given.items() if value != defaults.get(name)}
    for name, setting in _OWNED.items():
        if name in overrides:
            raise SettingsError(
                f"invalid settings: {_SETTING}: set {setting} instead of --{name.replace('_', '-')}"
            )
    return overrides
