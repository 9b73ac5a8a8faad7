"""The LeaderWorkerSet CRD, as far as the operator cares: the kind exists and stores objects.

A real cluster serves LeaderWorkerSets (leaderworkerset.x-k8s.io/v1) only once the LWS
controller and its CRD are installed; so does the emulator, which serves a CRD's kind only once
the CRD is created. Tests install this to let spec.multiNode run. The schema keeps every field:
the operator's LeaderWorkerSet is checked against the real shape by the renderer tests (its pod
templates against Kubernetes' own Pod schema), not here. No controller runs: a test plays the
LWS controller by writing the status it would write.
"""

from __future__ import annotations

from typing import Any

from tests.support.third_party_crd import third_party_crd

__all__ = ["LEADER_WORKER_SET_CRD"]

LEADER_WORKER_SET_CRD: dict[str, Any] = third_party_crd(
    "leaderworkerset.x-k8s.io",
    "v1",
    "LeaderWorkerSet",
    "leaderworkersets",
    list_kind="LeaderWorkerSetList",
)
