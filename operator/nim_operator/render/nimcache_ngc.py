"""The download container of a NIMCache with an `ngc` source: NVIDIA's NIM image itself.

Pure. As NVIDIA's operator does, the Job runs the NIM image (`modelPuller`) with its
`download-to-cache` command, NGC_API_KEY from the authSecret (by secretKeyRef, never as a
value; without an authSecret, none: NIM LLM 2.0.10 and later download models outside the
production branch without a key), and NIM_CACHE_PATH at the claim, so a NIMService running
the same image with the claim at the same path starts from the cache:

- `model.profiles` -> `--profiles <id|name> ...`; `["all"]` -> `--all`;
- `modelEndpoint` (a multi-model NIM) -> NIM_MODEL_NAME, and NIM downloads that model;
- neither (selectors only, or nothing): no profile flag, and NIM caches the profile it selects
  for the GPUs the pod has. NVIDIA's operator matches the selectors against the image's model
  manifest by running the image beforehand; this operator does not run images itself, so the
  selectors are reported in status.profiles (as asked) and documented as NIM's choice.

NIM images and NGC cannot be reached in this project's tests: what is checked is this
rendering (tests/operator/test_render_nimcache_sources.py) and the reconcile path on the API
emulator, never a real download.
"""

from __future__ import annotations

from typing import Any

from nim_operator.models_nimcache import ALL_PROFILES, CachedProfile, NGCSource
from nim_operator.render.container_env import MODEL_STORE_PATH

__all__ = ["NGC_COMMAND", "asked_profiles", "ngc_args", "ngc_env"]

NGC_COMMAND = ["download-to-cache"]


def ngc_args(ngc: NGCSource) -> list[str]:
    profiles = ngc.profiles()
    if ALL_PROFILES in profiles:
        return ["--all"]
    if profiles:
        return ["--profiles", *profiles]
    return []


def ngc_env(ngc: NGCSource) -> list[dict[str, Any]]:
    # NIM keeps its NGC and Hugging Face downloads under these; all inside the claim, as
    # NVIDIA's operator lays it out.
    env: list[dict[str, Any]] = [
        {"name": "NIM_CACHE_PATH", "value": MODEL_STORE_PATH},
        {"name": "NGC_HOME", "value": f"{MODEL_STORE_PATH}/ngc"},
        {"name": "HF_HOME", "value": f"{MODEL_STORE_PATH}/huggingface"},
    ]
    if ngc.auth_secret:
        ref = {"name": ngc.auth_secret, "key": "NGC_API_KEY"}
        env.append({"name": "NGC_API_KEY", "valueFrom": {"secretKeyRef": ref}})
    if ngc.model_endpoint:
        env.append({"name": "NIM_MODEL_NAME", "value": ngc.model_endpoint})
    return env


def asked_profiles(ngc: NGCSource) -> list[CachedProfile]:
    """status.profiles of a Ready ngc cache: each profile asked for by name, or one entry with
    the selectors as its config when NIM chose (none for `all`: the image decides)."""
    profiles = ngc.profiles()
    if ALL_PROFILES in profiles:
        return []
    if profiles:
        return [CachedProfile(name=name, model=ngc.model_endpoint) for name in profiles]
    selectors = ngc.model.selectors() if ngc.model is not None else {}
    if not selectors:
        return []
    return [CachedProfile(model=ngc.model_endpoint, config=dict(sorted(selectors.items())))]
