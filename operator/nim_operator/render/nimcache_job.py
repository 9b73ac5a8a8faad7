"""A NIMCache's children: the claim it fills (when `storage.pvc.create`) and the download Job.

Pure, like every renderer. For the `hf` and `dataStore` sources the Job runs the puller image's
`nim-serve download` (render/nimcache_hub.py) and reports its result in the termination
message; for `ngc` it runs NVIDIA's NIM image's `download-to-cache` (render/nimcache_ngc.py).
Either way the claim is mounted at the server's cache path, and a CA bundle (`proxy.certConfigMap`
or `certConfig`) is mounted and pointed at as render/proxy.py does it for a NIMService.
`initContainers` run before the download with the same mounts, as a NIMService's do
(render/extra_containers.py). A Job's spec cannot change once created, so it carries a digest
of what it was rendered from: reconcile replaces a Job whose digest differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from nim_operator import API_GROUP
from nim_operator.models_nimcache import DOWNLOAD_CONTAINER_NAME, NIMCacheSpec
from nim_operator.render.common import Owner, object_meta
from nim_operator.render.container_env import MODEL_STORE_PATH
from nim_operator.render.extra_containers import extra_container
from nim_operator.render.labels import (
    FIELD_MANAGER,
    INSTANCE_LABEL,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    PART_OF_LABEL,
)
from nim_operator.render.nimcache_hub import HUB_COMMAND, TMP_PATH, hub_args, hub_env
from nim_operator.render.nimcache_ngc import NGC_COMMAND, ngc_args, ngc_env
from nim_operator.render.proxy import (
    PROXY_CA_PATH,
    PROXY_CA_VOLUME,
    ca_bundle_env,
    ca_bundle_volume,
    proxy_variables,
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
CONTAINER_NAME = DOWNLOAD_CONTAINER_NAME
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
    """The claim, when the NIMCache creates it; owned, so it goes with the NIMCache.
    storage.pvc.annotations are its annotations, as a NIMService's claim has them."""
    pvc = spec.claim
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
        "metadata": object_meta(
            owner, spec.pvc_name(owner.name), cache_labels(owner.name), pvc.annotations
        ),
        "spec": claim,
    }


def _ca_bundle(spec: NIMCacheSpec) -> tuple[str, str] | None:
    """(ConfigMap, directory it is mounted at): proxy.certConfigMap, else NVIDIA's older
    certConfig; an empty name is no bundle, as NVIDIA treats it."""
    if spec.proxy is not None and spec.proxy.cert_config_map:
        return spec.proxy.cert_config_map, PROXY_CA_PATH
    if spec.cert_config is not None:
        return spec.cert_config.name, spec.cert_config.mount_path.rstrip("/") or "/"
    return None


def _env(spec: NIMCacheSpec) -> list[dict[str, Any]]:
    download = spec.source.hub_download()
    if download is not None:
        env = hub_env(download)
    else:
        assert spec.source.ngc is not None
        env = ngc_env(spec.source.ngc)
    env += proxy_variables(spec.proxy)
    if (bundle := _ca_bundle(spec)) is not None:
        env += ca_bundle_env(bundle[1])
        if spec.source.ngc is not None:
            # NVIDIA sets this with a proxy: the NIM SDK then uses the OpenSSL trust store
            # (SSL_CERT_FILE) rather than the roots compiled into it.
            env.append({"name": "NIM_SDK_USE_NATIVE_TLS", "value": "1"})
    return env


def _with_user_env(env: list[dict[str, Any]], spec: NIMCacheSpec) -> list[dict[str, Any]]:
    """spec.env after the operator's variables; an entry of the same name replaces the
    operator's, as NVIDIA's user env does."""
    user = [var.to_k8s() for var in spec.env or []]
    names = {var["name"] for var in user}
    return [var for var in env if var["name"] not in names] + user


def _mounts(spec: NIMCacheSpec) -> list[dict[str, Any]]:
    """The download's volume mounts, which its init containers share."""
    mount: dict[str, Any] = {"name": MODEL_STORE_VOLUME, "mountPath": MODEL_STORE_PATH}
    if spec.claim.sub_path:
        mount["subPath"] = spec.claim.sub_path
    mounts = [mount, {"name": TMP_VOLUME, "mountPath": TMP_PATH}]
    if (bundle := _ca_bundle(spec)) is not None:
        mounts.append({"name": PROXY_CA_VOLUME, "mountPath": bundle[1], "readOnly": True})
    return mounts


def _container(spec: NIMCacheSpec) -> dict[str, Any]:
    download = spec.source.hub_download()
    if download is not None:
        command, args = HUB_COMMAND, hub_args(download)
    else:
        assert spec.source.ngc is not None
        command, args = NGC_COMMAND, ngc_args(spec.source.ngc)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.model_puller,
        "command": list(command),
        "args": args,
        "env": _with_user_env(_env(spec), spec),
        "volumeMounts": _mounts(spec),
        # The JSON result (or the failure's reason) for the operator; the log's tail if the
        # process died before writing it (and always for a NIM image, which writes none).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            # Our image is built for a read-only root; NIM images write outside their cache
            # path and NVIDIA's operator does not set it. The restricted Pod Security Standard
            # holds either way (non-root, no escalation, no capabilities, seccomp).
            "readOnlyRootFilesystem": download is not None,
            "runAsNonRoot": True,
        },
    }
    if spec.resources is not None and (resources := spec.resources.container_resources()):
        container["resources"] = resources
    return container


def _pull_secrets(spec: NIMCacheSpec) -> list[str]:
    """The source's pull secret, then the init containers' new ones, each once."""
    names = [spec.pull_secret] if spec.pull_secret else []
    for extra in spec.init_containers or []:
        names += [name for name in extra.image.pull_secrets or [] if name not in names]
    return names


def _pod_spec(owner: CacheOwner, spec: NIMCacheSpec) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {
            "name": MODEL_STORE_VOLUME,
            "persistentVolumeClaim": {"claimName": spec.pvc_name(owner.name)},
        },
        {"name": TMP_VOLUME, "emptyDir": {}},
    ]
    if (bundle := _ca_bundle(spec)) is not None:
        volumes.append(ca_bundle_volume(PROXY_CA_VOLUME, bundle[0]))
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
        "volumes": volumes,
    }
    if spec.init_containers:
        # Only their own env: the download's variables (credentials included) are not copied.
        pod["initContainers"] = [
            extra_container(extra, _mounts(spec), default_pull_policy=None)
            for extra in spec.init_containers
        ]
    if pull_secrets := _pull_secrets(spec):
        pod["imagePullSecrets"] = [{"name": name} for name in pull_secrets]
    if spec.runtime_class_name:
        pod["runtimeClassName"] = spec.runtime_class_name
    if spec.node_selector:
        pod["nodeSelector"] = dict(sorted(spec.node_selector.items()))
    if spec.tolerations:
        pod["tolerations"] = [toleration.to_k8s() for toleration in spec.tolerations]
    return pod


def _failure_rules(spec: NIMCacheSpec) -> list[dict[str, Any]]:
    # A pod evicted or preempted is not the download's fault: not counted.
    rules: list[dict[str, Any]] = [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    ]
    if spec.source.ngc is None:  # the exit codes are nim-serve's; a NIM image has its own
        final = {"containerName": CONTAINER_NAME, "operator": "In", "values": _FINAL_EXIT_CODES}
        rules.insert(0, {"action": "FailJob", "onExitCodes": final})
    return rules


def render_download_job(owner: CacheOwner, spec: NIMCacheSpec) -> dict[str, Any]:
    """The Job `<name>-download`, its digest in an annotation (see the module docstring)."""
    job_spec = {
        "backoffLimit": JOB_BACKOFF_LIMIT,
        "podFailurePolicy": {"rules": _failure_rules(spec)},
        "template": {
            "metadata": {"labels": cache_labels(owner.name, managed=False)},
            "spec": _pod_spec(owner, spec),
        },
    }
    digest = hashlib.sha256(json.dumps(job_spec, sort_keys=True).encode()).hexdigest()[:16]
    metadata = _meta(owner, job_name(owner.name))
    metadata["annotations"] = {DIGEST_ANNOTATION: digest}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}
