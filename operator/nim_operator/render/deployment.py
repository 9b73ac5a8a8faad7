"""Deployment running the NIM server (plus any init and sidecar containers), the model store, and
restricted security."""

from __future__ import annotations

import json
from typing import Any

from nim_operator.models import GPU_RESOURCE, SERVER_CONTAINER_NAME, NIMServiceSpec
from nim_operator.render.common import API_PORT_NAME, Owner, object_meta
from nim_operator.render.container_env import (
    ADAPTERS_PATH,
    MODEL_STORE_PATH,
    container_env,
    container_port,
)
from nim_operator.render.extra_containers import (
    init_containers,
    pull_secret_names,
    sidecar_containers,
)
from nim_operator.render.labels import child_labels, selector_labels
from nim_operator.render.probes import container_probes, startup_budget_seconds
from nim_operator.render.proxy import proxy_volume, proxy_volume_mount
from nim_operator.render.pvc import pvc_name
from nim_operator.render.resource_claims import container_claims, pod_resource_claims

__all__ = [
    "CONTAINER_NAME",
    "PRESTOP_SLEEP_SECONDS",
    "pod_spec",
    "render_deployment",
    "termination_grace_period_seconds",
]

CONTAINER_NAME = SERVER_CONTAINER_NAME
MODEL_STORE_VOLUME = "model-store"
ADAPTERS_VOLUME = "lora-adapters"
SHM_VOLUME = "dshm"
TMP_VOLUME = "tmp"
# Scratch space of the server and its libraries (torch's inductor, vLLM's IPC sockets): the one
# writable place besides the model store when the root filesystem is read-only.
TMP_PATH = "/tmp"  # noqa: S108
# Shared memory for the engine's worker processes (a memory-backed emptyDir, not a temp dir).
SHM_PATH = "/dev/shm"  # noqa: S108
# After SIGTERM is scheduled, endpoints and kube-proxy need a few seconds to stop routing new
# requests to the pod; the preStop sleep covers that, then the server drains for
# shutdownTimeoutSeconds, and the margin leaves time to exit before SIGKILL.
PRESTOP_SLEEP_SECONDS = 10
GRACE_MARGIN_SECONDS = 5
# Default progress deadline (10 min) is shorter than a model download; allow the startup budget.
MIN_PROGRESS_DEADLINE_SECONDS = 600
PROGRESS_DEADLINE_SLACK_SECONDS = 300


def termination_grace_period_seconds(spec: NIMServiceSpec) -> int:
    return PRESTOP_SLEEP_SECONDS + spec.shutdown_timeout_seconds + GRACE_MARGIN_SECONDS


def _resources(spec: NIMServiceSpec) -> dict[str, Any]:
    """The user's resources with the GPU count in limits (extended resources need a limit).

    An nvidia.com/gpu limit the user wrote stays as written. Without `gpu` and without any
    nvidia.com/gpu entry, one GPU is requested: the service is for GPUs, and kind clusters say
    `gpu.count: 0` explicitly.
    """
    resources = spec.resources.to_k8s() if spec.resources is not None else {}
    resources.pop("claims", None)  # in the order container_claims gives them
    count = spec.gpu_count()
    if count > 0:
        resources.setdefault("limits", {}).setdefault(GPU_RESOURCE, count)
    sized = {group: dict(sorted(values.items())) for group, values in sorted(resources.items())}
    claims = container_claims(spec)
    return {"claims": claims, **sized} if claims else sized


def _model_store_volume(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any]:
    storage = spec.storage
    volume: dict[str, Any] = {"name": MODEL_STORE_VOLUME}
    if storage.pvc is not None:
        claim: dict[str, Any] = {"claimName": pvc_name(owner.name, spec)}
        if storage.read_only:
            claim["readOnly"] = True
        volume["persistentVolumeClaim"] = claim
    elif storage.host_path is not None:
        # hostPath breaks the "restricted" Pod Security Standard (see docs/operator-crd.md).
        volume["hostPath"] = {"path": storage.host_path}
    else:
        # No storage configured: a scratch directory, so the model is downloaded on every start.
        empty_dir = storage.empty_dir.to_k8s() if storage.empty_dir is not None else {}
        volume["emptyDir"] = empty_dir
    return volume


def _shm_volume(spec: NIMServiceSpec) -> dict[str, Any]:
    empty_dir: dict[str, Any] = {"medium": "Memory"}
    if spec.storage.shared_memory_size_limit is not None:
        empty_dir["sizeLimit"] = spec.storage.shared_memory_size_limit
    return {"name": SHM_VOLUME, "emptyDir": empty_dir}


def _volumes(owner: Owner, spec: NIMServiceSpec) -> list[dict[str, Any]]:
    volumes = [_model_store_volume(owner, spec), _shm_volume(spec)]
    if spec.adapters is not None:
        # Read-only: the server only reads adapters; whoever publishes them writes the claim.
        claim = {"claimName": spec.adapters.pvc.name, "readOnly": True}
        volumes.append({"name": ADAPTERS_VOLUME, "persistentVolumeClaim": claim})
    if spec.read_only_root_filesystem:
        volumes.append({"name": TMP_VOLUME, "emptyDir": {}})
    proxy_ca = proxy_volume(spec)
    if proxy_ca is not None:
        volumes.append(proxy_ca)
    return volumes


def _volume_mounts(spec: NIMServiceSpec) -> list[dict[str, Any]]:
    model_store: dict[str, Any] = {"name": MODEL_STORE_VOLUME, "mountPath": MODEL_STORE_PATH}
    if spec.storage.read_only:
        model_store["readOnly"] = True
    if spec.storage.pvc is not None and spec.storage.pvc.sub_path:
        model_store["subPath"] = spec.storage.pvc.sub_path
    mounts = [model_store, {"name": SHM_VOLUME, "mountPath": SHM_PATH}]
    if spec.adapters is not None:
        adapters: dict[str, Any] = {
            "name": ADAPTERS_VOLUME,
            "mountPath": ADAPTERS_PATH,
            "readOnly": True,
        }
        if spec.adapters.pvc.sub_path:
            adapters["subPath"] = spec.adapters.pvc.sub_path
        mounts.append(adapters)
    if spec.read_only_root_filesystem:
        mounts.append({"name": TMP_VOLUME, "mountPath": TMP_PATH})
    proxy_ca = proxy_volume_mount(spec)
    if proxy_ca is not None:
        mounts.append(proxy_ca)
    return mounts


def _container(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any]:
    container: dict[str, Any] = {"name": CONTAINER_NAME, "image": spec.image.reference}
    if spec.image.pull_policy:
        container["imagePullPolicy"] = spec.image.pull_policy
    if spec.command:
        container["command"] = list(spec.command)
    if spec.args:
        container["args"] = list(spec.args)
    container["env"] = container_env(owner.name, spec)
    container["ports"] = [
        {"name": API_PORT_NAME, "containerPort": container_port(spec), "protocol": "TCP"}
    ]
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    container["volumeMounts"] = _volume_mounts(spec)
    container.update(container_probes(spec))
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}}
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": spec.read_only_root_filesystem,
        "runAsNonRoot": True,
    }
    return container


def _pod_spec(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any]:
    # Init and sidecar containers see the model store exactly where the server does.
    shared_mounts = _volume_mounts(spec)[:1]
    pod: dict[str, Any] = {
        "serviceAccountName": owner.name,
        # The server never talks to the Kubernetes API; no token in the pod.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": spec.user_id,
            "runAsGroup": spec.group_id,
            "fsGroup": spec.group_id,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": termination_grace_period_seconds(spec),
        "containers": [_container(owner, spec), *sidecar_containers(spec, shared_mounts)],
        "volumes": _volumes(owner, spec),
    }
    if spec.init_containers:
        pod["initContainers"] = init_containers(spec, shared_mounts)
    if spec.dra_resources:
        pod["resourceClaims"] = pod_resource_claims(owner.name, spec)
    pull_secrets = pull_secret_names(spec)
    if pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in pull_secrets]
    if spec.node_selector:
        pod["nodeSelector"] = dict(sorted(spec.node_selector.items()))
    if spec.tolerations:
        # Dumped field by field from the model, so every field (tolerationSeconds too) survives.
        pod["tolerations"] = [toleration.to_k8s() for toleration in spec.tolerations]
    if spec.affinity:
        # Free-form, so key order is whatever the user wrote: sort it for a stable output.
        pod["affinity"] = json.loads(json.dumps(spec.affinity, sort_keys=True))
    for key, value in (
        ("runtimeClassName", spec.runtime_class_name),
        ("priorityClassName", spec.priority_class_name),
        ("schedulerName", spec.scheduler_name),
    ):
        if value:
            pod[key] = value
    return pod


def pod_spec(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any]:
    """The server's pod, as the Deployment runs it (a LeaderWorkerSet's leader starts from it)."""
    return _pod_spec(owner, spec)


def render_deployment(
    owner: Owner, spec: NIMServiceSpec, *, replicas: int | None
) -> dict[str, Any]:
    """The Deployment `<name>`; `replicas=None` leaves spec.replicas to the HPA."""
    labels = child_labels(owner.name, spec)
    template_meta: dict[str, Any] = {"labels": labels}
    if spec.annotations:
        template_meta["annotations"] = dict(sorted(spec.annotations.items()))
    deployment_spec: dict[str, Any] = {}
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    deployment_spec.update(
        {
            "selector": {"matchLabels": selector_labels(owner.name)},
            # Surge a new pod and keep the old one serving until the new one is ready: a
            # single-replica service stays up through every update (NVIDIA's 0/25% does not).
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "progressDeadlineSeconds": max(
                MIN_PROGRESS_DEADLINE_SECONDS,
                startup_budget_seconds(spec) + PROGRESS_DEADLINE_SLACK_SECONDS,
            ),
            "template": {"metadata": template_meta, "spec": _pod_spec(owner, spec)},
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(owner, owner.name, labels, spec.annotations),
        "spec": deployment_spec,
    }
