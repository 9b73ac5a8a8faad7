"""A NIMCache's status from its download Job and the Job's pods: pure, like conditions.py.

What the download cached, or why it failed, comes from the download container's termination
message (JSON written by `nim-serve download`), then its exit code, then the Job's own Failed
condition (a pod failure policy names the exit code in its message; BackoffLimitExceeded and
DeadlineExceeded stand for themselves).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nim_operator.conditions import AS_EXPECTED, Problem
from nim_operator.models_nimcache import CachedModel, CachedProfile, NIMCacheStatus
from nim_operator.render.nimcache_job import CONTAINER_NAME, EXIT_REASONS

__all__ = ["CacheObservation", "compute_cache_status", "job_outcome"]

MAX_MESSAGE = 1024
_EXIT_CODE = re.compile(r"exit code (\d+)")
_KNOWN_REASONS = set(EXIT_REASONS.values())


@dataclass(frozen=True)
class CacheObservation:
    generation: int
    pvc: str | None
    job_name: str | None
    # What stops the cache before or besides the Job: InvalidSpec, SecretNotFound, ...
    problem: Problem | None = None
    job: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()
    # Set while an outdated Job is being replaced.
    replacing: bool = False
    # An ngc source: the NIM image writes no result of ours, so what was asked is what the
    # status reports once the Job completes (its model name, and NVIDIA's status.profiles).
    nim_model: str | None = None
    nim_profiles: Sequence[CachedProfile] = ()


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def _job_condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def _terminations(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The download container's terminated states, newest pod first."""
    found = []
    ordered = sorted(
        pods, key=lambda p: str(p.get("metadata", {}).get("creationTimestamp", "")), reverse=True
    )
    for pod in ordered:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != CONTAINER_NAME:
                continue
            terminated = (status.get("state") or {}).get("terminated") or (
                status.get("lastState") or {}
            ).get("terminated")
            if terminated:
                found.append(terminated)
    return found


def _message_json(terminated: Mapping[str, Any]) -> dict[str, Any]:
    try:
        parsed = json.loads(str(terminated.get("message") or ""))
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _cached_model(pods: Sequence[Mapping[str, Any]]) -> CachedModel | None:
    for terminated in _terminations(pods):
        result = _message_json(terminated)
        if terminated.get("exitCode") == 0 and result.get("path"):
            size = result.get("sizeBytes")
            return CachedModel(
                name=str(result.get("model") or result.get("dataset") or "") or None,
                served_name=str(result.get("servedName") or "") or None,
                path=str(result["path"]),
                size_bytes=size if isinstance(size, int) and size >= 0 else None,
            )
    return None


def _pod_failure(pods: Sequence[Mapping[str, Any]]) -> Problem | None:
    for terminated in _terminations(pods):
        code = terminated.get("exitCode")
        if code == 0:
            continue
        if terminated.get("reason") == "OOMKilled":
            return Problem(
                "OOMKilled", "the download ran out of memory: raise spec.resources.limits.memory"
            )
        result = _message_json(terminated)
        reason = result.get("reason")
        if reason not in _KNOWN_REASONS:
            reason = EXIT_REASONS.get(code if isinstance(code, int) else -1, "DownloadFailed")
        message = str(result.get("message") or terminated.get("message") or "").strip()
        return Problem(str(reason), _clip(message or f"the download exited with code {code}"))
    return None


def job_outcome(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
) -> tuple[str, Problem | CachedModel | None]:
    """("Ready", model or None) | ("Failed", why) | ("InProgress" | "Pending", None)."""
    if _job_condition(job, "Complete") is not None:
        return "Ready", _cached_model(pods)
    failed = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget")
    if failed is not None:
        from_pods = _pod_failure(pods)
        if from_pods is not None:
            return "Failed", from_pods
        message = str(failed.get("message") or "")
        match = _EXIT_CODE.search(message)
        if match is not None and int(match.group(1)) in EXIT_REASONS:
            return "Failed", Problem(EXIT_REASONS[int(match.group(1))], _clip(message))
        return "Failed", Problem(str(failed.get("reason") or "JobFailed"), _clip(message))
    if int((job.get("status") or {}).get("active") or 0) > 0:
        return "InProgress", None
    return "Pending", None


def _transition_time(previous: Mapping[str, Any], kind: str, status: str, now: str) -> str:
    """metav1.Condition semantics: the time moves only when the condition's status changes."""
    for old in previous.get("conditions") or []:
        if old.get("type") == kind and old.get("status") == status:
            return str(old.get("lastTransitionTime") or now)
    return now


def compute_cache_status(
    obs: CacheObservation, previous: Mapping[str, Any], *, now: str
) -> dict[str, Any]:
    """The NIMCache's new status (camelCase). lastTransitionTime moves only with a status."""
    model: CachedModel | None = None
    failure = obs.problem
    if failure is not None:
        state = "Failed"
    elif obs.replacing or obs.job is None:
        state = "Pending"
    else:
        state, found = job_outcome(obs.job, obs.pods)
        if isinstance(found, Problem):
            failure = found
        elif found is not None:
            model = found
    if state == "Ready" and model is None and obs.nim_model:
        model = CachedModel(name=obs.nim_model)
    if state == "Ready" and model is None and previous.get("model"):
        # The pod that said what it cached is gone (garbage collected): what it said stays.
        model = CachedModel.model_validate(previous["model"])
    if failure is not None:
        ready = ("False", failure.reason, failure.message)
    elif state == "Ready":
        what = model.name if model is not None and model.name else "the model"
        size = f", {model.size_bytes} bytes" if model and model.size_bytes is not None else ""
        ready = ("True", "Cached", f"{what} is in claim {obs.pvc}{size}")
    elif state == "InProgress":
        ready = ("False", "Downloading", f"Job {obs.job_name} is downloading the model")
    elif obs.replacing:
        ready = ("False", "Pending", "the spec changed: the download Job is being replaced")
    else:
        ready = ("False", "Pending", f"waiting for Job {obs.job_name} to start")
    failed = ("True", failure.reason, failure.message) if failure else ("False", AS_EXPECTED, "")
    conditions = [
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": _transition_time(previous, kind, status, now),
            "observedGeneration": obs.generation,
        }
        for kind, (status, reason, message) in (("Ready", ready), ("Failed", failed))
    ]
    result = NIMCacheStatus.model_validate(
        {
            "observedGeneration": obs.generation,
            "state": state,
            "pvc": obs.pvc,
            "job": obs.job_name,
            "profiles": [p.to_k8s() for p in obs.nim_profiles] if state == "Ready" else None,
            "model": model.to_k8s() if model is not None else None,
            "conditions": conditions,
        }
    )
    return result.to_k8s()
