"""A NIMCache's children: the claim it fills (when `storage.pvc.create`) and the download Job.

Pure, like every renderer. The Job runs the puller image's `nim-serve download` (nim_server's
download command) with the claim mounted at the server's cache path, and reports its result in
the termination message. Its spec cannot change once created, so it carries a digest of what it
was rendered from: reconcile replaces a Job whose digest differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from nim_operator import API_GROUP
from nim_operator.models_nimcache import NIMCacheSpec
from nim_operator.render.common import Owner
from nim_operator.render.container_env import MODEL_STORE_PATH
from nim_operator.render.labels import (
    FIELD_MANAGER,
    INSTANCE_LABEL,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    PART_OF_LABEL,
)

__all__ = [
    "CACHE_APP_NAME",
    "CACHE_KIND",
    "CONTAINER_NAME",
    "DIGEST_ANNOTATION",
    "EXIT_REASONS",
    "JOB_BACKOFF_LIMIT",
    "CacheOwner",
    "cache_labels",
    "job_name",
    "render_cache_pvc",
    "render_download_job",
]

CACHE_KIND = "NIMCache"
CACHE_APP_NAME = "nim-cache"
CONTAINER_NAME = "download"
DIGEST_ANNOTATION = f"{API_GROUP}/spec-digest"
# Pods a failing download may take, retries included, before the Job gives up: a network hiccup
# is worth a retry; the causes in EXIT_REASONS fail the Job at once (podFailurePolicy).
JOB_BACKOFF_LIMIT = 3
# `nim-serve download`'s exit codes (nim_server.download) and the NIMCache reasons they become.
EXIT_REASONS = {10: "AuthFailed", 11: "ModelNotFound", 12: "DiskFull", 13: "DownloadFailed"}
# Exit codes retrying cannot fix: wrong credentials, no such model, a full claim.
_FINAL_EXIT_CODES = [10, 11, 12]
MODEL_STORE_VOLUME = "model-store"
TMP_VOLUME = "tmp"
TMP_PATH = "/tmp"  # noqa: S108 (an emptyDir: the root filesystem is read-only)


@dataclass(frozen=True)
class CacheOwner(Owner):
    """The NIMCache being rendered."""

    kind: str = CACHE_KIND


def job_name(cache_name: str) -> str:
    return f"{cache_name}-download"


def cache_labels(cache_name: str, *, managed: bool = True) -> dict[str, str]:
    """Labels of a NIMCache's children. The pod template leaves out `managed-by`: the
    operator's pod watch is for NIMService pods, and a download pod must not reach it."""
    labels = {INSTANCE_LABEL: cache_name, NAME_LABEL: CACHE_APP_NAME}
    if managed:
        labels[MANAGED_BY_LABEL] = FIELD_MANAGER
        labels[PART_OF_LABEL] = "nimstack"
    return dict(sorted(labels.items()))


def _meta(owner: CacheOwner, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": cache_labels(owner.name),
        "ownerReferences": [owner.reference()],
    }


def render_cache_pvc(owner: CacheOwner, spec: NIMCacheSpec) -> dict[str, Any] | None:
    """The claim, when the NIMCache creates it; owned, so it goes with the NIMCache."""
    pvc = spec.storage.pvc
    if not pvc.create or pvc.size is None:
        return None
    claim: dict[str, Any] = {
        "accessModes": [pvc.volume_access_mode],
        "resources": {"requests": {"storage": pvc.size}},
    }
    if pvc.storage_class:
        claim["storageClassName"] = pvc.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(owner, spec.pvc_name(owner.name)),
        "spec": claim,
    }


def _env(spec: NIMCacheSpec) -> list[dict[str, Any]]:
    hf = spec.hf
    env: list[dict[str, Any]] = [
        # huggingface_hub and transformers keep small files under HF_HOME: the writable /tmp.
        {"name": "HF_HOME", "value": f"{TMP_PATH}/hf-home"},
        {"name": "XDG_CACHE_HOME", "value": f"{TMP_PATH}/.cache"},
    ]
    if hf.endpoint:
        env.append({"name": "HF_ENDPOINT", "value": hf.endpoint})
    if hf.auth_secret:
        # By reference only: the token never appears in the Job, the status or a log.
        ref = {"name": hf.auth_secret, "key": "HF_TOKEN"}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    proxy = spec.proxy
    if proxy is not None:
        for name, value in (
            ("HTTP_PROXY", proxy.http_proxy),
            ("HTTPS_PROXY", proxy.https_proxy),
            ("NO_PROXY", proxy.no_proxy),
        ):
            if value:
                env.append({"name": name, "value": value})
    return env


def _args(spec: NIMCacheSpec) -> list[str]:
    args = ["download", "--cache-path", MODEL_STORE_PATH]
    model = spec.hf.model_id()
    if model:
        args += ["--model", model]
    if spec.hf.revision:
        args += ["--revision", spec.hf.revision]
    return args


def _container(spec: NIMCacheSpec) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": MODEL_STORE_VOLUME, "mountPath": MODEL_STORE_PATH}
    if spec.storage.pvc.sub_path:
        mount["subPath"] = spec.storage.pvc.sub_path
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.hf.model_puller,
        "command": ["nim-serve"],
        "args": _args(spec),
        "env": _env(spec),
        "volumeMounts": [mount, {"name": TMP_VOLUME, "mountPath": TMP_PATH}],
        # The JSON result (or the failure's reason) for the operator; the log's tail if the
        # process died before writing it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
    }
    if spec.resources is not None:
        resources = spec.resources.to_k8s()
        container["resources"] = {g: dict(sorted(v.items())) for g, v in sorted(resources.items())}
    return container


def _pod_spec(owner: CacheOwner, spec: NIMCacheSpec) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # the Job retries with new pods (backoffLimit)
        "automountServiceAccountToken": False,  # the download never talks to the API server
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": spec.user_id,
            "runAsGroup": spec.group_id,
            "fsGroup": spec.group_id,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(spec)],
        "volumes": [
            {
                "name": MODEL_STORE_VOLUME,
                "persistentVolumeClaim": {"claimName": spec.pvc_name(owner.name)},
            },
            {"name": TMP_VOLUME, "emptyDir": {}},
        ],
    }
    if spec.hf.pull_secret:
        pod["imagePullSecrets"] = [{"name": spec.hf.pull_secret}]
    if spec.node_selector:
        pod["nodeSelector"] = dict(sorted(spec.node_selector.items()))
    if spec.tolerations:
        pod["tolerations"] = [toleration.to_k8s() for toleration in spec.tolerations]
    return pod


def render_download_job(owner: CacheOwner, spec: NIMCacheSpec) -> dict[str, Any]:
    """The Job `<name>-download`, its digest in an annotation (see the module docstring)."""
    job_spec = {
        "backoffLimit": JOB_BACKOFF_LIMIT,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER_NAME,
                        "operator": "In",
                        "values": _FINAL_EXIT_CODES,
                    },
                },
                # A pod evicted or preempted is not the download's fault: not counted.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {
            "metadata": {"labels": cache_labels(owner.name, managed=False)},
            "spec": _pod_spec(owner, spec),
        },
    }
    digest = hashlib.sha256(json.dumps(job_spec, sort_keys=True).encode()).hexdigest()[:16]
    metadata = _meta(owner, job_name(owner.name))
    metadata["annotations"] = {DIGEST_ANNOTATION: digest}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}
