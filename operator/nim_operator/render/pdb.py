"""PodDisruptionBudget `<name>`: node drains take pods one at a time when there can be several."""

from __future__ import annotations

from typing import Any

from nim_operator.models import NIMServiceSpec
from nim_operator.render.common import Owner, object_meta
from nim_operator.render.labels import child_labels, selector_labels

__all__ = ["render_pdb"]


def render_pdb(
    owner: Owner, spec: NIMServiceSpec, *, replicas: int | None
) -> dict[str, Any] | None:
    """A budget of maxUnavailable 1 when the service can run more than one pod.

    With the HPA on (`replicas=None`) the bound is maxReplicas rather than minReplicas: with
    maxUnavailable 1, a lone pod can still be evicted, so the budget never blocks a drain.

    With spec.multiNode `replicas` counts groups, and the budget still covers every pod of every
    group, one at a time: evicting any pod (a worker too) restarts its whole group
    (RecreateGroupOnPodRestart), whose pods then count as unavailable until it is back, so no
    second group can be disrupted meanwhile. Leaders only would let a drain evict the workers of
    every group at once; a budget per group (or a whole group's worth of pods allowed, as a
    `minAvailable` of (groups - 1) x size would) would block drains, or let a drain that evicts a
    node's pods in parallel take one pod of several groups. One group is never budgeted: it
    cannot stay up through any eviction of its pods. (NVIDIA's operator renders no budget, and
    the LeaderWorkerSet controller none either.)
    """
    ceiling = spec.max_possible_replicas() if replicas is None else replicas
    if ceiling <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(owner, owner.name, child_labels(owner.name, spec)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner.name)}},
    }
