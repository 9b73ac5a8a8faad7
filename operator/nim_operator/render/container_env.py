"""Environment of the NIM container: what the server needs, then the user's overrides.

Credentials only ever travel as secretKeyRef, so they never appear in the Deployment object.
"""

from __future__ import annotations

from typing import Any

from nim_operator.models import API_KEY_ENV, NIMServiceSpec
from nim_operator.render.proxy import proxy_env

__all__ = [
    "ADAPTERS_PATH",
    "CONTAINER_PORT",
    "MODEL_STORE_PATH",
    "container_env",
    "container_port",
]

CONTAINER_PORT = 8000
MODEL_STORE_PATH = "/model-store"
ADAPTERS_PATH = "/lora-adapters"  # where spec.adapters.pvc is mounted: NIM_PEFT_SOURCE


def _value(name: str, value: str | int) -> dict[str, Any]:
    return {"name": name, "value": str(value)}


def _from_secret(
    name: str, secret: str, *, optional: bool, key: str | None = None
) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key or name}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def injected_env(owner_name: str, spec: NIMServiceSpec) -> list[dict[str, Any]]:
    """The NIM_* variables and credentials the operator sets, in a fixed order."""
    env = [_value("NIM_SERVER_PORT", CONTAINER_PORT)]
    if spec.sets_served_model_name():
        env.append(_value("NIM_SERVED_MODEL_NAME", spec.served_model_name(owner_name)))
    if spec.model is not None and spec.model.name:
        env.append(_value("NIM_MODEL_NAME", spec.model.name))
    if spec.model is not None and spec.model.max_model_len is not None:
        env.append(_value("NIM_MAX_MODEL_LEN", spec.model.max_model_len))
    env.append(_value("NIM_CACHE_PATH", MODEL_STORE_PATH))
    if spec.adapters is not None:
        env.append(_value("NIM_PEFT_SOURCE", ADAPTERS_PATH))
        if spec.adapters.refresh_interval_seconds is not None:
            env.append(_value("NIM_PEFT_REFRESH_INTERVAL", spec.adapters.refresh_interval_seconds))
        if spec.adapters.max_rank is not None:
            env.append(_value("NIM_MAX_LORA_RANK", spec.adapters.max_rank))
    if spec.gpu_count() > 0:
        env.append(_value("NIM_TENSOR_PARALLEL_SIZE", spec.gpu_count()))
    env += [
        _value("NIM_JSONL_LOGGING", 1),
        _value("NIM_LOG_LEVEL", "INFO"),
        _value("NIM_SHUTDOWN_TIMEOUT", spec.shutdown_timeout_seconds),
    ]
    env += proxy_env(spec)
    if spec.auth_secret:
        # Required for NGC models, so a Secret without the key fails loudly at container start;
        # an hf:// or local model needs only HF_TOKEN (if gated), so the key may be absent.
        required = spec.ngc_key_required()
        env.append(_from_secret("NGC_API_KEY", spec.auth_secret, optional=not required))
        # Only gated Hugging Face models need a token; most secrets will not carry one.
        env.append(_from_secret("HF_TOKEN", spec.auth_secret, optional=True))
    if spec.api_key_secret is not None:
        # Not optional: a server asked to require a key must not start without one.
        secret = spec.api_key_secret
        env.append(_from_secret(API_KEY_ENV, secret.name, optional=False, key=secret.key))
    return env


def container_env(owner_name: str, spec: NIMServiceSpec) -> list[dict[str, Any]]:
    """Injected env with the user's `spec.env` applied: same name replaces in place, new appends."""
    env = injected_env(owner_name, spec)
    position = {entry["name"]: index for index, entry in enumerate(env)}
    for user_var in spec.env or []:
        entry = user_var.to_k8s()
        if user_var.name in position:
            env[position[user_var.name]] = entry
        else:
            position[user_var.name] = len(env)
            env.append(entry)
    return env


def container_port(spec: NIMServiceSpec) -> int:
    """The port the server listens on: 8000 unless the user's env overrides NIM_SERVER_PORT."""
    for user_var in spec.env or []:
        if user_var.name == "NIM_SERVER_PORT" and user_var.value and user_var.value.isdigit():
            return int(user_var.value)
    return CONTAINER_PORT
