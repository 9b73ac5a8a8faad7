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

Switching a running NIMService between the two shapes is a handover, not a gap: the workload
of the old shape keeps running (and the Service keeps selecting its pods) until the new one has
a ready replica, and only then is it deleted (`workload_to_keep`). The new workload's events
(both kinds are watched) bring the run that finishes the handover.
Everything except `leader_worker_sets_served` and `workload_to_keep` is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nim_operator.child_records import controller_uid
from nim_operator.conditions import Problem
from nim_operator.kube import CapabilityCache, KubeClient, ResourceKind
from nim_operator.models import NIMServiceSpec
from nim_operator.render.common import ChildRef, Owner
from nim_operator.render.leaderworkerset import LWS_API_VERSION

__all__ = [
    "LEADER_WORKER_SETS",
    "LWS_MISSING",
    "as_workload",
    "leader_worker_sets_served",
    "missing_backend",
    "workload_to_keep",
]

LEADER_WORKER_SETS = ResourceKind(LWS_API_VERSION, "leaderworkersets")
LWS_MISSING = "LeaderWorkerSetMissing"
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")


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


def _refs(name: str) -> dict[str, ChildRef]:
    return {
        "Deployment": ChildRef("apps/v1", "Deployment", DEPLOYMENTS.plural, name),
        "LeaderWorkerSet": ChildRef(
            LWS_API_VERSION, "LeaderWorkerSet", LEADER_WORKER_SETS.plural, name
        ),
    }


def _has_a_ready_replica(workload: Mapping[str, Any] | None) -> bool:
    """Serving, or meant to run nothing (then there is nothing to wait for)."""
    if workload is None:
        return False
    if int((workload.get("spec") or {}).get("replicas", 1)) == 0:
        return True
    return int((workload.get("status") or {}).get("readyReplicas") or 0) > 0


async def workload_to_keep(
    kube: KubeClient, owner: Owner, spec: NIMServiceSpec, served: bool, absent: set[ChildRef]
) -> str | None:
    """The kind of the old-shape workload to leave running for now, or None (delete it).

    With spec.multiNode the old shape is the Deployment, without it the LeaderWorkerSet. It is
    kept while it exists (ours) and the new shape's workload has no ready replica yet. `absent`
    is the run's record of children known not to exist: a steady state costs no request, and
    an old workload found gone joins it.
    """
    if not served:
        return None  # no LeaderWorkerSet can exist, and a multi-node spec deploys nothing
    multi_node = spec.multi_node is not None
    old_kind, new = (
        ("Deployment", LEADER_WORKER_SETS) if multi_node else ("LeaderWorkerSet", DEPLOYMENTS)
    )
    old_ref = _refs(owner.name)[old_kind]
    if old_ref in absent:
        return None
    old = await kube.get(
        ResourceKind(old_ref.api_version, old_ref.plural),
        owner.namespace,
        owner.name,
        metadata_only=True,
    )
    if old is None:
        absent.add(old_ref)
        return None
    if controller_uid(old) != owner.uid:
        return None  # not ours: never deleted anyway
    live = await kube.get(new, owner.namespace, owner.name)
    ours = live if live is not None and controller_uid(live) == owner.uid else None
    return None if _has_a_ready_replica(ours) else old_kind
