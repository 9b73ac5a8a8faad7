"""End-to-end: a NIMCache whose status NVIDIA's operator wrote (a restore of an object that
NVIDIA's operator managed) is accepted by our status schema and taken over by ours.

kmock only: the status is written through the status subresource as a restore tool would, and
the strict emulator validates it against crds/nimcache.yaml as kube-apiserver does.
"""

from __future__ import annotations

from typing import Any

from nim_operator.kube import ResourceKind
from tests.operator.test_nimcache_e2e import JOBS, NIMCACHES, cache_where, create_cache, e2e
from tests.operator.test_operator_e2e import E2E, PVCS, condition

__all__ = ["e2e"]  # the fixture, shared with test_nimcache_e2e

NVIDIA_STATUS: dict[str, Any] = {
    "state": "PVC-Created",
    "type": "model-free",
    "pvc": "adopted-pvc",
    "conditions": [
        {
            "type": "NIM_CACHE_PVC_CREATED",
            "status": "True",
            "reason": "PVCCreated",
            "message": "The PVC has been created for caching NIM model",
            "lastTransitionTime": "2025-06-01T00:00:00Z",
        }
    ],
}


def spec_without_pvc() -> dict[str, Any]:
    source = {"hf": {"modelPuller": "nimstack/nim-server:0.1.0", "modelName": "org/m"}}
    return {"source": source, "storage": {}}


async def write_status(e2e: E2E, kind: ResourceKind, name: str, status: dict[str, Any]) -> None:
    await e2e.api.merge_patch(kind, e2e.namespace, name, {"status": status}, subresource="status")


async def test_nvidias_status_is_accepted_then_replaced_by_ours(e2e: E2E) -> None:
    await create_cache(e2e, "adopted", spec_without_pvc())
    failed = await cache_where(e2e, "adopted", "Failed")
    assert condition(failed, "Failed")["reason"] == "PVCNotFound"

    await write_status(e2e, NIMCACHES, "adopted", NVIDIA_STATUS)
    restored = await e2e.get(NIMCACHES, "adopted")
    assert restored is not None
    assert (restored["status"]["state"], restored["status"]["type"]) == (
        "PVC-Created",
        "model-free",
    )
    # Nothing changed for our operator (still no claim), yet its next run (a timer tick)
    # replaces NVIDIA's status with its own, whole.
    again = await cache_where(e2e, "adopted", "Failed")
    assert "type" not in again["status"]
    assert [c["type"] for c in again["status"]["conditions"]] == ["Ready", "Failed"]
    assert condition(again, "Failed")["reason"] == "PVCNotFound"

    # The claim NVIDIA's operator would fill appears: the download starts.
    claim = {
        "metadata": {"name": "adopted-pvc"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    await e2e.api.create(PVCS, e2e.namespace, claim)
    await e2e.child(JOBS, "adopted-download")
    ours = await cache_where(e2e, "adopted", "Pending")
    assert ours["status"]["pvc"] == "adopted-pvc"
