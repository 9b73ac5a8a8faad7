"""spec.initContainers and spec.sidecarContainers (NVIDIA's NIMContainerSpec) as pod containers.

Each runs under the restricted Pod Security Standard like the server container (the spec has no
securityContext field to loosen it), sees the model store where the server does, and gets only
its own environment: the server's injected variables, credentials included, are not copied
(NVIDIA's operator merges them in). An unset pullPolicy is the server image's, as at NVIDIA.
"""

from __future__ import annotations

from typing import Any

from nim_operator.models import ExtraContainer, NIMServiceSpec

__all__ = [
    "RESTRICTED_CONTAINER_SECURITY_CONTEXT",
    "extra_container",
    "init_containers",
    "pull_secret_names",
    "sidecar_containers",
]

RESTRICTED_CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def extra_container(
    extra: ExtraContainer, mounts: list[dict[str, Any]], *, default_pull_policy: str | None
) -> dict[str, Any]:
    """One NIMContainerSpec as a restricted pod container (a NIMCache's init containers too)."""
    container: dict[str, Any] = {"name": extra.name, "image": extra.image.reference}
    pull_policy = extra.image.pull_policy or default_pull_policy
    if pull_policy:
        container["imagePullPolicy"] = pull_policy
    if extra.command:
        container["command"] = list(extra.command)
    if extra.args:
        container["args"] = list(extra.args)
    if extra.env:
        container["env"] = [var.to_k8s() for var in extra.env]
    if extra.working_dir:
        container["workingDir"] = extra.working_dir
    if mounts:
        container["volumeMounts"] = [dict(mount) for mount in mounts]
    container["securityContext"] = {
        key: (dict(value) if isinstance(value, dict) else value)
        for key, value in RESTRICTED_CONTAINER_SECURITY_CONTEXT.items()
    }
    return container


def init_containers(spec: NIMServiceSpec, mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pod's initContainers, in the order given; `mounts` are shared with the server."""
    policy = spec.image.pull_policy
    return [
        extra_container(extra, mounts, default_pull_policy=policy)
        for extra in spec.init_containers or []
    ]


def sidecar_containers(spec: NIMServiceSpec, mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Containers appended after the server's, in the order given."""
    policy = spec.image.pull_policy
    return [
        extra_container(extra, mounts, default_pull_policy=policy)
        for extra in spec.sidecar_containers or []
    ]


def pull_secret_names(spec: NIMServiceSpec) -> list[str]:
    """The server image's pull Secrets, then the extra containers' new ones, each once."""
    names = list(spec.image.pull_secrets or [])
    for extra in (spec.init_containers or []) + (spec.sidecar_containers or []):
        names += [name for name in extra.image.pull_secrets or [] if name not in names]
    return names
