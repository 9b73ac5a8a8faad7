"""Kubernetes Events for condition transitions (and only transitions).

A timer tick that finds nothing new must not add an Event; a pod that starts crash-looping
must. `transition_events` is pure; `post` hands the result to kopf's event poster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import kopf

__all__ = ["EventNote", "post", "transition_events"]

# Ready=False for these reasons is a normal wait, not a warning.
_WAITING_REASONS = {
    "NoReadyPods",
    "Starting",
    "PodsPending",
    "RolloutPending",
    "WaitingForPods",
    "DeploymentMissing",
    "LeaderWorkerSetNotCreated",
    "ScaledToZero",
    "EndpointPickerNotReady",
}


@dataclass(frozen=True)
class EventNote:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def _is_warning(condition: Mapping[str, Any]) -> bool:
    kind, status = condition.get("type"), condition.get("status")
    if kind in ("Degraded", "Failed"):
        return status == "True"
    if kind == "Ready":
        return status == "False" and condition.get("reason") not in _WAITING_REASONS
    if kind == "Exposed":  # e.g. GatewayAPIMissing: routes asked for cannot be created
        return status == "False" and condition.get("reason") not in _WAITING_REASONS
    if kind == "ScalingActive":  # the built-in autoscaler lost its metrics
        return status == "False" and condition.get("reason") not in _WAITING_REASONS
    return kind == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded"


# Conditions whose first appearance with this status is not news.
_QUIET_STARTS = {
    ("Degraded", "False"),
    ("Failed", "False"),
    ("ScalingActive", "True"),
    ("ScalingLimited", "False"),
}


def _is_quiet_start(condition: Mapping[str, Any]) -> bool:
    """Degraded/Failed False, or a healthy autoscaler, appearing on a new object is not news."""
    return (condition.get("type"), condition.get("status")) in _QUIET_STARTS


def transition_events(
    previous: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]
) -> list[EventNote]:
    """One Event per new reason among the conditions whose status or reason changed."""
    before = {c.get("type"): c for c in previous}
    changed: dict[str, list[Mapping[str, Any]]] = {}
    for condition in current:
        old = before.get(condition.get("type"))
        if old is None and _is_quiet_start(condition):
            continue
        if old is not None and (old.get("status"), old.get("reason")) == (
            condition.get("status"),
            condition.get("reason"),
        ):
            continue
        changed.setdefault(str(condition.get("reason")), []).append(condition)
    notes = []
    for reason, conditions in changed.items():
        summary = ", ".join(f"{c.get('type')}={c.get('status')}" for c in conditions)
        message = next((str(c.get("message")) for c in conditions if c.get("message")), "")
        warning = any(_is_warning(c) for c in conditions)
        notes.append(
            EventNote(
                type="Warning" if warning else "Normal",
                reason=reason,
                message=f"{summary}: {message}" if message else summary,
            )
        )
    return notes


def post(body: Mapping[str, Any], notes: Sequence[EventNote]) -> None:
    """Queue the Events on the NIMService; kopf posts them in the background with retries."""
    # kopf reads only apiVersion, kind and metadata (name, namespace, uid) to address the Event.
    target = cast(kopf.Body, body)
    for note in notes:
        kopf.event(target, type=note.type, reason=note.reason, message=note.message)
