"""status.draResourceStatuses: the pure builder, and what it costs a reconcile in API requests.

The builder is given pods and ResourceClaims as the API returns them (names, owner references,
the resourceclaim controller's pod-claim annotation, the scheduler's allocation). The request
tests run reconcile() in-process against the emulator serving resource.k8s.io/v1, with the
emulator's request log as the count; the operator process end to end is test_dra_e2e's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from nim_operator.dra_status import (
    MISSING,
    POD_CLAIM_ANNOTATION,
    RESOURCE_CLAIMS,
    build_dra_statuses,
    claim_state,
)
from nim_operator.events import EventNote
from nim_operator.kube import CapabilityCache, KubeClient, ResourceKind
from nim_operator.models import NIMServiceSpec
from nim_operator.reconcile import Runtime, reconcile
from nim_operator.render.resource_claims import claim_template_name
from nim_operator.settings import Settings
from tests.support.dra_api import serve_dra
from tests.support.kmock_cluster import EmulatedCluster
from tests.support.kmock_harness import EmulatedControllers, PodState, connection_from_kubeconfig

NS = "models"
NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
PODS = ResourceKind("v1", "pods")
LOGGER = logging.getLogger("test")
IMAGE = {"repository": "registry.k8s.io/pause", "tag": "3.10"}
GENERATED = {"claimCreationSpec": {"devices": [{"name": "gpu"}]}}
ALLOCATION = {
    "devices": {
        "results": [
            {"request": "gpu", "driver": "gpu.nvidia.com", "pool": "node-a", "device": "gpu-0"}
        ]
    }
}


def spec_with(*resources: dict[str, Any]) -> NIMServiceSpec:
    return NIMServiceSpec.from_body({"image": IMAGE, "draResources": list(resources)})


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"app.kubernetes.io/instance": "llama"}}}


def claim(
    name: str,
    *,
    pod: str | None = None,
    pod_claim: str | None = None,
    created: str = "2026-12-05T03:00:00Z",
    allocated: bool = False,
    reserved: bool = False,
    deleting: bool = False,
) -> dict[str, Any]:
    """A ResourceClaim as the API returns it; with `pod`, one the resourceclaim controller made."""
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if pod is not None:
        meta["annotations"] = {POD_CLAIM_ANNOTATION: pod_claim}
        meta["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod,
                "uid": f"uid-{pod}",
                "controller": True,
            }
        ]
    if deleting:
        meta["deletionTimestamp"] = "2026-12-05T03:30:00Z"
    status: dict[str, Any] = {}
    if allocated:
        status["allocation"] = ALLOCATION
    if reserved:
        status["reservedFor"] = [{"resource": "pods", "name": pod, "uid": f"uid-{pod}"}]
    return {"metadata": meta, "spec": {"devices": {"requests": []}}, "status": status}


def built(
    spec: NIMServiceSpec, pods: Sequence[Mapping[str, Any]], claims: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]] | None:
    statuses = build_dra_statuses("llama", spec, pods, claims)
    return None if statuses is None else [s.to_k8s() for s in statuses]


class TestClaimState:
    @pytest.mark.parametrize(
        ("allocated", "reserved", "deleting", "state"),
        [
            (False, False, False, "pending"),
            (True, False, False, "allocated"),
            (True, True, False, "allocated,reserved"),
            (False, False, True, "deleted"),
            (True, True, True, "deleted,allocated,reserved"),
        ],
    )
    def test_nvidia_state_words(
        self, allocated: bool, reserved: bool, deleting: bool, state: str
    ) -> None:
        made = claim(
            "c",
            pod="p",
            pod_claim="dra-0",
            allocated=allocated,
            reserved=reserved,
            deleting=deleting,
        )
        assert claim_state(made) == state

    def test_a_claim_without_status_is_pending(self) -> None:
        assert claim_state({"metadata": {"name": "c"}}) == "pending"


class TestBuildDRAStatuses:
    def test_none_without_dra_resources(self) -> None:
        assert built(NIMServiceSpec.from_body({"image": IMAGE}), [pod("llama-0")], []) is None

    def test_each_kind_of_entry_with_the_claims_of_the_pods(self) -> None:
        spec = spec_with(
            GENERATED,
            {"resourceClaimTemplateName": "rdma-nics", "requests": ["nic"]},
            {"resourceClaimName": "shared-gpu"},
        )
        assert spec.dra_resources is not None
        creation = spec.dra_resources[0].claim_creation_spec
        assert creation is not None
        template = claim_template_name("llama", 0, creation)
        pods = [pod("llama-a"), pod("llama-b")]
        claims = [
            # Listed newest first: the status lists them oldest first.
            claim(
                "llama-b-dra-0-x", pod="llama-b", pod_claim="dra-0", created="2026-12-05T03:02:00Z"
            ),
            claim(
                "llama-a-dra-0-y",
                pod="llama-a",
                pod_claim="dra-0",
                created="2026-12-05T03:01:00Z",
                allocated=True,
                reserved=True,
            ),
            # Another NIMService's pod has a dra-0 too: not ours.
            claim("other-a-dra-0-z", pod="other-a", pod_claim="dra-0"),
            claim(
                "llama-a-dra-1-w", pod="llama-a", pod_claim="dra-1", allocated=True, deleting=True
            ),
            claim("shared-gpu", allocated=True),
            claim("unrelated"),
        ]
        assert built(spec, pods, claims) == [
            {
                "name": "dra-0",
                "resourceClaimTemplateStatus": {
                    "name": template,
                    "resourceClaimStatuses": [
                        {"name": "llama-a-dra-0-y", "state": "allocated,reserved"},
                        {"name": "llama-b-dra-0-x", "state": "pending"},
                    ],
                },
            },
            {
                "name": "dra-1",
                "resourceClaimTemplateStatus": {
                    "name": "rdma-nics",
                    "resourceClaimStatuses": [
                        {"name": "llama-a-dra-1-w", "state": "deleted,allocated"}
                    ],
                },
            },
            {
                "name": "dra-2",
                "resourceClaimStatus": {"name": "shared-gpu", "state": "allocated"},
            },
        ]

    def test_before_any_pod_and_with_the_named_claim_missing(self) -> None:
        spec = spec_with({"resourceClaimTemplateName": "rdma-nics"}, {"resourceClaimName": "gone"})
        assert built(spec, [], [claim("someone-elses")]) == [
            {"name": "dra-0", "resourceClaimTemplateStatus": {"name": "rdma-nics"}},
            {"name": "dra-1", "resourceClaimStatus": {"name": "gone", "state": MISSING}},
        ]

    def test_the_same_input_builds_the_same_status(self) -> None:
        """Deterministic (no churn): claims listed in another order give an equal status."""
        spec = spec_with({"resourceClaimTemplateName": "t"})
        claims = [
            claim(
                f"llama-{i}-dra-0",
                pod=f"llama-{i}",
                pod_claim="dra-0",
                created="2026-12-05T03:00:00Z",
            )
            for i in range(3)
        ]
        pods = [pod(f"llama-{i}") for i in range(3)]
        assert built(spec, pods, claims) == built(spec, pods[::-1], claims[::-1])


# --- what it costs a reconcile ----------------------------------------------------------------


def _ignore_events(body: Mapping[str, Any], notes: Sequence[EventNote]) -> None:
    return None


@pytest_asyncio.fixture(loop_scope="session")
async def kube(cluster: EmulatedCluster, tmp_path: Path) -> AsyncIterator[KubeClient]:
    cluster.inspect(serve_dra)  # this test's own emulator: nothing to undo afterwards
    client = KubeClient(connection_from_kubeconfig(cluster.write_kubeconfig(tmp_path / "kc")))
    yield client
    await client.close()


@pytest.fixture
def runtime(kube: KubeClient) -> Runtime:
    return Runtime(
        kube, Settings(capability_ttl=300), CapabilityCache(kube, ttl=300), _ignore_events
    )


def claim_lists(cluster: EmulatedCluster, since: int) -> list[dict[str, str]]:
    """The query parameters of each ResourceClaim list the emulator served from `since` on."""

    def read(emulator: Any) -> list[dict[str, str]]:
        return [
            dict(request.params)
            for request in emulator._requests[since:]
            if request.resource is not None
            and request.resource.plural == RESOURCE_CLAIMS.plural
            and str(request.method.value) == "GET"
        ]

    return cluster.inspect(read)


def status_writes(cluster: EmulatedCluster, since: int) -> int:
    def read(emulator: Any) -> int:
        return sum(
            request.resource is not None
            and request.resource.plural == "nimservices"
            and request.subresource == "status"
            for request in emulator._requests[since:]
        )

    return cluster.inspect(read)


def count(cluster: EmulatedCluster) -> int:
    return cluster.inspect(lambda emulator: len(emulator._requests))


async def create(kube: KubeClient, spec: dict[str, Any]) -> dict[str, Any]:
    body = {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": "llama", "namespace": NS},
    }
    return await kube.create(NIMSERVICES, NS, {**body, "spec": spec})


async def fresh(kube: KubeClient) -> dict[str, Any]:
    body = await kube.get(NIMSERVICES, NS, "llama")
    assert body is not None
    return body


async def make_claims(kube: KubeClient, labels: Mapping[str, str] | None) -> None:
    """Kubernetes' resourceclaim controller and scheduler: an allocated claim per pod for dra-0."""
    for live in await kube.list(PODS, NS, label_selector="app.kubernetes.io/instance=llama"):
        meta = live["metadata"]
        name = f"{meta['name']}-dra-0-abcde"
        owner = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
        }
        claim_meta: dict[str, Any] = {
            "name": name,
            "annotations": {POD_CLAIM_ANNOTATION: "dra-0"},
            "ownerReferences": [owner],
        }
        if labels:
            claim_meta["labels"] = dict(labels)
        request = {"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}
        await kube.create(
            RESOURCE_CLAIMS,
            NS,
            {"metadata": claim_meta, "spec": {"devices": {"requests": [request]}}},
        )
        await kube.merge_patch(
            RESOURCE_CLAIMS, NS, name, {"status": {"allocation": ALLOCATION}}, subresource="status"
        )


async def test_claims_are_listed_once_a_pod_exists_and_the_status_written_once(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    """Only generated templates: one list by the NIMService's labels per run, none before pods."""
    body = await create(
        kube, {"image": IMAGE, "gpu": {"count": 0}, "replicas": 1, "draResources": [GENERATED]}
    )
    mark = count(cluster)
    await reconcile(runtime, body, logger=LOGGER)
    assert claim_lists(cluster, mark) == []  # no pod yet: no claim can have been made
    first = (await fresh(kube))["status"]["draResourceStatuses"]
    (entry,) = first
    assert entry["resourceClaimTemplateStatus"].keys() == {"name"}

    await EmulatedControllers(kube).pods_become(NS, "llama", PodState.READY)
    await make_claims(
        kube, {"app.kubernetes.io/instance": "llama", "app.kubernetes.io/name": "nim-service"}
    )
    mark = count(cluster)
    await reconcile(runtime, await fresh(kube), logger=LOGGER)
    selector = "app.kubernetes.io/instance=llama,app.kubernetes.io/name=nim-service"
    assert claim_lists(cluster, mark) == [{"labelSelector": selector}]
    (entry,) = (await fresh(kube))["status"]["draResourceStatuses"]
    (made,) = entry["resourceClaimTemplateStatus"]["resourceClaimStatuses"]
    assert made["state"] == "allocated"

    # Nothing changed: the claims are read again, the status is not written again.
    mark = count(cluster)
    await reconcile(runtime, await fresh(kube), logger=LOGGER)
    assert len(claim_lists(cluster, mark)) == 1
    assert status_writes(cluster, mark) == 0
    cluster.assert_no_unexpected_rejections()


async def test_a_users_template_or_claim_means_the_namespace_is_listed(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    """A claim the user named exists before any pod (and has none of our labels)."""
    spec = {
        "image": IMAGE,
        "gpu": {"count": 0},
        "draResources": [{"resourceClaimName": "shared-gpu"}],
    }
    body = await create(kube, spec)
    mark = count(cluster)
    await reconcile(runtime, body, logger=LOGGER)
    assert claim_lists(cluster, mark) == [{}]
    status = (await fresh(kube))["status"]
    assert status["draResourceStatuses"] == [
        {"name": "dra-0", "resourceClaimStatus": {"name": "shared-gpu", "state": MISSING}}
    ]

    # draResources removed: the field goes with it.
    await kube.merge_patch(NIMSERVICES, NS, "llama", {"spec": {"draResources": None}})
    await reconcile(runtime, await fresh(kube), logger=LOGGER)
    assert "draResourceStatuses" not in (await fresh(kube))["status"]
    cluster.assert_no_unexpected_rejections()
