"""A NIMService's `storage.nimCache`: the spec it renders with, once the NIMCache is Ready.

Pure: reconcile reads the NIMCache and hands it here. The claim is mounted read-only at
/model-store (with the cache's subPath) and NIM_MODEL_NAME points at the model's directory
there, as the download reported it in the NIMCache's status. NIM_CACHE_PATH moves to a scratch
directory: the server refuses a cache path it cannot write, and writes nothing there for a
model that is a prepared directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nim_operator.conditions import CACHE_NOT_READY, Problem
from nim_operator.models import EnvVar, ModelSpec, NIMServiceSpec, PVCStorage
from nim_operator.render.container_env import MODEL_STORE_PATH

__all__ = ["CACHE_SCRATCH_PATH", "cached_model_spec"]

# /tmp is an emptyDir when the root filesystem is read-only.
CACHE_SCRATCH_PATH = "/tmp/nim-cache"  # noqa: S108


def cached_model_spec(
    spec: NIMServiceSpec, cache: Mapping[str, Any] | None, *, namespace: str
) -> NIMServiceSpec | Problem:
    """`spec` with storage.nimCache resolved against the NIMCache object `cache`, or why not.

    A missing or Failed NIMCache is a failure; one still downloading is CACHE_NOT_READY.
    The user's own NIM_CACHE_PATH in `env` is kept.
    """
    ref = spec.storage.nim_cache
    assert ref is not None
    if cache is None:
        return Problem(
            "NIMCacheNotFound",
            f'storage.nimCache.name "{ref.name}" not found in namespace {namespace}: '
            "create the NIMCache, or fix the name",
        )
    status = cache.get("status") or {}
    state = status.get("state")
    if state == "Failed":
        conditions = status.get("conditions") or []
        failed: Mapping[str, Any] = next((c for c in conditions if c.get("type") == "Failed"), {})
        why = f"{failed.get('reason', '')}: {failed.get('message', '')}"
        return Problem("NIMCacheFailed", f'NIMCache "{ref.name}" failed: {why}'[:1024])
    model = status.get("model") or {}
    generation = (cache.get("metadata") or {}).get("generation")
    current = generation is None or status.get("observedGeneration") == generation
    # A status from before the NIMCache's last edit says nothing about the model it asks for.
    if state != "Ready" or not status.get("pvc") or not current:
        return Problem(
            CACHE_NOT_READY,
            f'waiting for NIMCache "{ref.name}" to be Ready (it is {state or "Pending"})',
        )
    if not model.get("path"):
        return Problem(
            "NIMCacheFailed",
            f'NIMCache "{ref.name}" is Ready but does not say where the model is: '
            "delete its download Job to run it again",
        )
    sub_path = (((cache.get("spec") or {}).get("storage") or {}).get("pvc") or {}).get("subPath")
    storage = spec.storage.model_copy(
        update={
            "nim_cache": None,
            "pvc": PVCStorage(name=status["pvc"], sub_path=sub_path or None),
            "read_only": True,
        }
    )
    model_spec = (spec.model or ModelSpec()).model_copy(
        update={"name": f"{MODEL_STORE_PATH}/{model['path']}"}
    )
    env = list(spec.env or [])
    if not any(var.name == "NIM_CACHE_PATH" for var in env):
        env.insert(0, EnvVar(name="NIM_CACHE_PATH", value=CACHE_SCRATCH_PATH))
    return spec.model_copy(update={"storage": storage, "model": model_spec, "env": env})
