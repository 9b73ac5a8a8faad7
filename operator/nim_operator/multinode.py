"""spec.multiNode in the cluster: whether LeaderWorkerSets are served, and what one's status says.

The LeaderWorkerSet is not a built-in kind: it exists only where the LWS controller and its CRD
(leaderworkerset.x-k8s.io/v1) are installed. Without them a multi-node NIMService has nowhere
to run: reconcile applies nothing (a Deployment running before the switch keeps serving) and
reports Failed with reason LeaderWorkerSetMissing, a wait rather than a crash: the timer's runs
ask discovery again (through the CapabilityCache, at most once per capability TTL) and create
the LeaderWorkerSet once the kind is served.

The status is computed from the LeaderWorkerSet as from a Deployment (nim_operator.conditions):
`as_workload` gives its counts the Deployment's names. A LeaderWorkerSet counts groups, and a
group is ready when all its pods are, so "1/1 replicas ready" means one whole group. It reports
no observedGeneration and no available count: a ready group is counted as available.
LeaderWorkerSets are watched like Deployments (nim_operator.child_records): kopf starts that watch
when the CRD appears, so a group becoming ready reaches the status at once.
Everything except `leader_worker_sets_served` is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nim_operator.conditions import Problem
from nim_operator.kube import CapabilityCache, ResourceKind
from nim_operator.models import NIMServiceSpec
from nim_operator.render.leaderworkerset import LWS_API_VERSION

__all__ = [
    "LEADER_WORKER_SETS",
    "LWS_MISSING",
    "as_workload",
    "leader_worker_sets_served",
    "missing_backend",
]

LEADER_WORKER_SETS = ResourceKind(LWS_API_VERSION, "leaderworkersets")
LWS_MISSING = "LeaderWorkerSetMissing"


async def leader_worker_sets_served(capabilities: CapabilityCache) -> bool:
    # Asked whether or not this NIMService is multi-node: one that no longer is may still have
    # a LeaderWorkerSet to delete.
    return await capabilities.has(LEADER_WORKER_SETS.api_version, LEADER_WORKER_SETS.plural)


def missing_backend(spec: NIMServiceSpec, served: bool) -> Problem | None:
    """Why a multi-node spec cannot run here, or None."""
    if spec.multi_node is None or served:
        return None
    return Problem(
        LWS_MISSING,
        f"spec.multiNode needs LeaderWorkerSets ({LWS_API_VERSION}), which this cluster does "
        "not serve: install the LeaderWorkerSet controller (kubernetes-sigs/lws); the "
        "LeaderWorkerSet is created once the kind is served",
    )


def as_workload(lws: Mapping[str, Any]) -> dict[str, Any]:
    """The LeaderWorkerSet's counts under the Deployment's field names, for the status."""
    meta = lws.get("metadata") or {}
    status = lws.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    return {
        # Without its generation: the status has no observedGeneration to compare it with.
        "metadata": {key: meta[key] for key in ("name", "namespace", "uid") if key in meta},
        "spec": {"replicas": int((lws.get("spec") or {}).get("replicas", 1))},
        "status": {
            "replicas": int(status.get("replicas") or 0),
            "updatedReplicas": int(status.get("updatedReplicas") or 0),
            "readyReplicas": ready,
            "availableReplicas": ready,
        },
    }
