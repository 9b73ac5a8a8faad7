"""The pods of each NIMService as the operator's own watch reports them.

kopf already watches our pods (to re-reconcile their owner on a crash loop or an eviction).
Keeping what that watch delivers lets a timer tick compute the status without listing pods: at
1,000 NIMServices a list per tick was a quarter of the operator's steady load on the API server,
and the costliest part of it (a list is filtered over every pod in the namespace).

Only timer ticks read from here, and only for an owner whose pods were listed for real within
`max_age`: a list on every other kind of run refreshes the entry, and the age limit bounds what a
DELETED event lost in a watch reconnect can leave behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nim_operator.render.labels import INSTANCE_LABEL, selector_labels

OwnerKey = tuple[str, str]  # (namespace, NIMService name)


def _owner_of(pod: Mapping[str, Any]) -> OwnerKey | None:
    """The NIMService whose selector matches this pod's labels, if any."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    owner = labels.get(INSTANCE_LABEL)
    if not owner or not selector_labels(owner).items() <= labels.items():
        return None
    return (str(meta.get("namespace") or ""), str(owner))


# What nim_operator.conditions reads of a pod's status; the rest (IPs, images, volume mounts,
# resources, probe times...) is most of a live pod's status and would be held for every pod.
_STATUS_KEYS = ("phase", "reason", "message")
_CONDITION_KEYS = ("type", "status", "reason", "message")
_CONTAINER_KEYS = ("name", "ready", "restartCount", "state", "lastState")


def _slim(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What the status is computed from (nim_operator.conditions): name, labels, those fields."""
    meta = pod.get("metadata") or {}
    kept = ("name", "namespace", "labels", "deletionTimestamp")
    status = pod.get("status") or {}
    slim: dict[str, Any] = {key: status[key] for key in _STATUS_KEYS if key in status}
    if conditions := status.get("conditions"):
        slim["conditions"] = [
            {key: c[key] for key in _CONDITION_KEYS if key in c} for c in conditions
        ]
    for kind in ("initContainerStatuses", "containerStatuses"):
        if containers := status.get(kind):
            slim[kind] = [{key: c[key] for key in _CONTAINER_KEYS if key in c} for c in containers]
    return {"metadata": {key: meta[key] for key in kept if key in meta}, "status": slim}


@dataclass
class PodCache:
    max_age: float
    clock: Callable[[], float] = time.monotonic
    _pods: dict[OwnerKey, dict[str, Mapping[str, Any]]] = field(default_factory=dict)
    _listed_at: dict[OwnerKey, float] = field(default_factory=dict)

    def seen(self, event_type: str | None, pod: Mapping[str, Any]) -> None:
        """Record one watch event (type None: kopf's initial listing)."""
        owner = _owner_of(pod)
        name = (pod.get("metadata") or {}).get("name")
        if owner is None or not name:
            return
        pods = self._pods.setdefault(owner, {})
        if event_type == "DELETED":
            pods.pop(name, None)
        else:
            pods[name] = _slim(pod)

    def listed(self, owner: OwnerKey, pods: Sequence[Mapping[str, Any]]) -> None:
        """Replace what is known of `owner`'s pods with the result of a real list."""
        self._pods[owner] = {p["metadata"]["name"]: _slim(p) for p in pods}
        self._listed_at[owner] = self.clock()

    def fresh(self, owner: OwnerKey) -> list[Mapping[str, Any]] | None:
        """`owner`'s pods, or None if they were not listed within `max_age`."""
        listed_at = self._listed_at.get(owner)
        if listed_at is None or self.clock() - listed_at > self.max_age:
            return None
        return list(self._pods.get(owner, {}).values())

    def forget(self, owner: OwnerKey) -> None:
        self._pods.pop(owner, None)
        self._listed_at.pop(owner, None)
