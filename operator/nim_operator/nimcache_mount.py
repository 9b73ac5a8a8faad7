"""A NIMService's `storage.nimCache`: the spec it renders with, once the NIMCache is Ready.

Pure: reconcile reads the NIMCache and hands it here. What the claim holds decides the layout:

- a model `nim-serve download` prepared (`hf`, `dataStore`): the claim is mounted read-only at
  /model-store (with the cache's subPath) and NIM_MODEL_NAME points at the model's directory
  there, as the download reported it in the NIMCache's status. NIM_CACHE_PATH moves to a
  scratch directory: the server refuses a cache path it cannot write, and writes nothing there
  for a model that is a prepared directory;
- NIM profiles NVIDIA's NIM image cached (`ngc`): the claim is mounted at /model-store, which
  stays NIM_CACHE_PATH, as NVIDIA's operator lays it out; the NIM image serving it finds its
  profiles there (storage.readOnly as the user set it: NIM may write next to its profiles);
- a dataset: no server can serve it, so the NIMService fails with a reason saying so.

`storage.nimCache.profile` becomes NIM_MODEL_PROFILE, as NVIDIA's operator sets it. When the
NIMCache's status names the profiles it cached, the profile must be one of them.
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


def _source(cache: Mapping[str, Any]) -> Mapping[str, Any]:
    return ((cache.get("spec") or {}).get("source")) or {}


def _holds_dataset(cache: Mapping[str, Any]) -> bool:
    source = _source(cache)
    return any(bool((source.get(kind) or {}).get("datasetName")) for kind in ("hf", "dataStore"))


def _profile_problem(name: str, profile: str | None, status: Mapping[str, Any]) -> Problem | None:
    if not profile:
        return None
    cached = [p["name"] for p in status.get("profiles") or [] if p.get("name")]
    if cached and profile not in cached:
        return Problem(
            "NIMCacheProfileNotFound",
            f'storage.nimCache.profile "{profile}" is not among the profiles NIMCache "{name}" '
            f"cached ({', '.join(cached)}): pick one of them, or add it to the NIMCache",
        )
    return None


def _with_env(env: list[EnvVar], name: str, value: str) -> list[EnvVar]:
    """`env` with `name` set to `value` first, unless the user set it in `env` themselves."""
    if any(var.name == name for var in env):
        return env
    return [EnvVar(name=name, value=value), *env]


def cached_model_spec(
    spec: NIMServiceSpec, cache: Mapping[str, Any] | None, *, namespace: str
) -> NIMServiceSpec | Problem:
    """`spec` with storage.nimCache resolved against the NIMCache object `cache`, or why not.

    A missing or Failed NIMCache is a failure; one still downloading is CACHE_NOT_READY.
    The user's own NIM_CACHE_PATH and NIM_MODEL_PROFILE in `env` are kept.
    """
    ref = spec.storage.nim_cache
    # from_body leaves storage.nimCache only when it names a NIMCache (models_nvidia_shapes).
    assert ref is not None
    assert ref.name
    if cache is None:
        return Problem(
            "NIMCacheNotFound",
            f'storage.nimCache.name "{ref.name}" not found in namespace {namespace}: '
            "create the NIMCache, or fix the name",
        )
    if _holds_dataset(cache):
        return Problem(
            "NIMCacheHoldsDataset",
            f'NIMCache "{ref.name}" holds a dataset (its source has datasetName), not a model: '
            "point storage.nimCache at a NIMCache with a model",
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
    if (problem := _profile_problem(ref.name, ref.profile, status)) is not None:
        return problem
    nim_profiles = "ngc" in _source(cache)
    if not nim_profiles and not model.get("path"):
        return Problem(
            "NIMCacheFailed",
            f'NIMCache "{ref.name}" is Ready but does not say where the model is: '
            "delete its download Job to run it again",
        )
    sub_path = (((cache.get("spec") or {}).get("storage") or {}).get("pvc") or {}).get("subPath")
    env = list(spec.env or [])
    if ref.profile:
        env = _with_env(env, "NIM_MODEL_PROFILE", ref.profile)
    storage = spec.storage.model_copy(
        update={
            "nim_cache": None,
            "pvc": PVCStorage(name=status["pvc"], sub_path=sub_path or None),
            "read_only": spec.storage.read_only if nim_profiles else True,
        }
    )
    if nim_profiles:  # NIM_CACHE_PATH stays /model-store, where the profiles are
        return spec.model_copy(update={"storage": storage, "env": env})
    model_spec = (spec.model or ModelSpec()).model_copy(
        update={"name": f"{MODEL_STORE_PATH}/{model['path']}"}
    )
    env = _with_env(env, "NIM_CACHE_PATH", CACHE_SCRATCH_PATH)
    return spec.model_copy(update={"storage": storage, "model": model_spec, "env": env})
