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

__all__ = ["LEADER_WORKER_SET_CRD"]

LEADER_WORKER_SET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "leaderworkersets.leaderworkerset.x-k8s.io"},
    "spec": {
        "group": "leaderworkerset.x-k8s.io",
        "scope": "Namespaced",
        "names": {
            "kind": "LeaderWorkerSet",
            "plural": "leaderworkersets",
            "singular": "leaderworkerset",
            "listKind": "LeaderWorkerSetList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}
