"""The download container's command line and environment for the `hf` and `dataStore` sources.

Pure. Both run the nimstack server image's `nim-serve download` (nim_server.download) against
a Hugging Face-compatible hub: `hf.endpoint`, or NeMo Data Store's Hugging Face API at
`dataStore.endpoint` (used as given: NVIDIA's CRD has it end in `/v1/hf`, the path the data
store serves that API under). A dataset repository (`datasetName`) is downloaded as a dataset.
"""

from __future__ import annotations

from typing import Any

from nim_operator.models_nimcache import HubDownload
from nim_operator.render.container_env import MODEL_STORE_PATH

__all__ = ["HUB_COMMAND", "TMP_PATH", "hub_args", "hub_env"]

HUB_COMMAND = ["nim-serve"]
TMP_PATH = "/tmp"  # noqa: S108 (an emptyDir: the root filesystem is read-only)


def hub_args(download: HubDownload) -> list[str]:
    args = ["download", "--cache-path", MODEL_STORE_PATH]
    if download.dataset:
        args += ["--dataset", download.dataset]
    elif download.model:
        args += ["--model", download.model]
    if download.revision:
        args += ["--revision", download.revision]
    return args


def hub_env(download: HubDownload) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        # huggingface_hub and transformers keep small files under HF_HOME: the writable /tmp.
        {"name": "HF_HOME", "value": f"{TMP_PATH}/hf-home"},
        {"name": "XDG_CACHE_HOME", "value": f"{TMP_PATH}/.cache"},
    ]
    if download.endpoint:
        env.append({"name": "HF_ENDPOINT", "value": download.endpoint})
    if download.auth_secret:
        # By reference only: the token never appears in the Job, the status or a log.
        ref = {"name": download.auth_secret, "key": "HF_TOKEN"}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    return env
