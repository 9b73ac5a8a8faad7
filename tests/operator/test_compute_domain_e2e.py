"""End-to-end: multiNode.computeDomain with the real operator process on the API-server emulator.

ComputeDomains need NVIDIA's DRA driver and its CRD (resource.nvidia.com/v1beta1): the first
test starts without the CRD (the NIMService is Failed with reason ComputeDomainUnavailable and
nothing is deployed), then installs the driver's CRD (tests/support/compute_domain, its spec
schema as the driver's API type states it) and sees the ComputeDomain and the LeaderWorkerSet
whose pods claim its channel. No driver runs here (no NVLink, no GPU): what the driver would do
with the ComputeDomain (create the channel's ResourceClaimTemplate, start IMEX daemons) is out
of reach; the tests check what the operator writes and how it reacts. The LeaderWorkerSet CRD
is installed too (tests/support/leaderworkerset). Emulator only: the tests install CRDs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from nim_operator.kube import KubeClient, ResourceKind
from tests.operator.test_operator_e2e import E2E, NIMSERVICES, condition, cpu_spec
from tests.support.compute_domain import COMPUTE_DOMAIN_CRD
from tests.support.kmock_cluster import EmulatedCluster
from tests.support.kmock_harness import ClusterDriver, OperatorProcess, install_crds
from tests.support.leaderworkerset import LEADER_WORKER_SET_CRD

COMPUTE_DOMAINS = ResourceKind("resource.nvidia.com/v1beta1", "computedomains")
LEADER_WORKER_SETS = ResourceKind("leaderworkerset.x-k8s.io/v1", "leaderworkersets")
CLAIM = "compute-domain-channel"


@pytest.fixture
def e2e(
    api: KubeClient,
    namespace: str,
    driver: ClusterDriver,
    operator_process: OperatorProcess,
    emulated: EmulatedCluster | None,
) -> E2E:
    if emulated is None:
        pytest.skip("installs CRDs: emulator only")
    return E2E(api, namespace, driver, operator_process)


@pytest.fixture
def install(api: KubeClient) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """Install a CRD; it stays for the package's later tests, as test_multinode_e2e's does."""

    async def install_crd(crd: dict[str, Any]) -> None:
        await install_crds(api, [crd], field_manager="nimstack-e2e")

    return install_crd


async def served(api: KubeClient, kind: ResourceKind) -> bool:
    return await api.has_resource(kind.api_version, kind.plural)


def multi_node(compute_domain: dict[str, Any] | None) -> dict[str, Any]:
    spec = cpu_spec(
        multiNode={"parallelism": {"tensor": 1, "pipeline": 2}, "computeDomain": compute_domain}
    )
    del spec["gpu"]  # one GPU per pod, parallelism.tensor
    return spec


def pod_claims(lws: dict[str, Any]) -> list[tuple[list[Any], list[Any]]]:
    """For the leader's and the worker's pod: its resourceClaims, and its server's claims."""
    group = lws["spec"]["leaderWorkerTemplate"]
    found = []
    for template in (group["leaderTemplate"], group["workerTemplate"]):
        pod = template["spec"]
        (server,) = [c for c in pod["containers"] if c["name"] == "nim"]
        found.append((pod.get("resourceClaims") or [], server["resources"].get("claims") or []))
    return found


async def test_created_compute_domain_waits_for_the_kind_then_every_pod_claims_its_channel(
    e2e: E2E, install: Callable[[dict[str, Any]], Awaitable[None]]
) -> None:
    if not await served(e2e.api, LEADER_WORKER_SETS):
        await install(LEADER_WORKER_SET_CRD)
    await e2e.create("nvl", multi_node({"create": True}))
    if not await served(e2e.api, COMPUTE_DOMAINS):
        nim = await e2e.status_where(
            "nvl",
            lambda o: condition(o, "Failed").get("reason") == "ComputeDomainUnavailable",
            "Failed ComputeDomainUnavailable",
        )
        assert condition(nim, "Failed")["status"] == "True"
        assert "resource.nvidia.com/v1beta1" in condition(nim, "Failed")["message"]
        # Pods without their IMEX channel would not be what was asked: nothing is deployed.
        assert await e2e.get(LEADER_WORKER_SETS, "nvl") is None
        assert e2e.operator.alive()
        await install(COMPUTE_DOMAIN_CRD)

    domain = await e2e.child(COMPUTE_DOMAINS, "nvl")
    owner = await e2e.get(NIMSERVICES, "nvl")
    assert owner is not None
    assert domain["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    template = "nvl-compute-domain-channel"
    assert domain["spec"]["channel"] == {
        "resourceClaimTemplate": {"name": template},
        "allocationMode": "Single",
    }
    lws = await e2e.child(LEADER_WORKER_SETS, "nvl")
    for pod, server in pod_claims(lws):
        assert pod == [{"name": CLAIM, "resourceClaimTemplateName": template}]
        assert server == [{"name": CLAIM}]
    await e2e.status_where(
        "nvl", lambda o: condition(o, "Failed").get("status") == "False", "no longer Failed"
    )

    # The driver's part: the IMEX daemons of two nodes joined. It reaches the NIMService's status
    # (the ComputeDomain is read on each run, not watched: within a timer tick).
    node = {"name": "gb200-01", "ipAddress": "10.0.0.1", "cliqueID": "c.1", "status": "Ready"}
    other = {**node, "name": "gb200-02", "ipAddress": "10.0.0.2", "status": "NotReady"}
    driver_status = {"status": {"status": "NotReady", "nodes": [node, other]}}
    await e2e.api.merge_patch(
        COMPUTE_DOMAINS, e2e.namespace, "nvl", driver_status, subresource="status"
    )
    nim = await e2e.status_where(
        "nvl",
        lambda o: bool((o.get("status") or {}).get("computeDomainStatus", {}).get("nodes")),
        "status.computeDomainStatus with the nodes",
    )
    assert nim["status"]["computeDomainStatus"] == {
        "name": "nvl",
        "status": "NotReady",
        "nodes": [
            {"name": "gb200-01", "cliqueID": "c.1", "status": "Ready"},
            {"name": "gb200-02", "cliqueID": "c.1", "status": "NotReady"},
        ],
    }

    # Switched off: the ComputeDomain goes, and the pods no longer claim its channel.
    await e2e.patch_spec("nvl", {"multiNode": {"computeDomain": None}})

    async def domain_gone() -> bool:
        return await e2e.get(COMPUTE_DOMAINS, "nvl") is None

    await e2e.until(domain_gone, "the ComputeDomain deleted")

    async def no_claims() -> bool:
        live = await e2e.get(LEADER_WORKER_SETS, "nvl")
        return live is not None and all(p == [] and s == [] for p, s in pod_claims(live))

    await e2e.until(no_claims, "the pods without the channel claim")
    await e2e.status_where(
        "nvl",
        lambda o: "computeDomainStatus" not in (o.get("status") or {}),
        "status.computeDomainStatus removed",
    )


async def test_an_existing_compute_domain_is_waited_for_and_its_channel_claimed(
    e2e: E2E, install: Callable[[dict[str, Any]], Awaitable[None]]
) -> None:
    for crd, kind in (
        (LEADER_WORKER_SET_CRD, LEADER_WORKER_SETS),
        (COMPUTE_DOMAIN_CRD, COMPUTE_DOMAINS),
    ):
        if not await served(e2e.api, kind):
            await install(crd)
    await e2e.create("rack", multi_node({"name": "rack-7"}))
    nim = await e2e.status_where(
        "rack",
        lambda o: condition(o, "Failed").get("reason") == "ComputeDomainNotFound",
        "Failed ComputeDomainNotFound",
    )
    assert '"rack-7"' in condition(nim, "Failed")["message"]
    assert await e2e.get(LEADER_WORKER_SETS, "rack") is None

    channel = {"resourceClaimTemplate": {"name": "rack-7-imex"}}
    body = {
        "apiVersion": COMPUTE_DOMAINS.api_version,
        "kind": "ComputeDomain",
        "metadata": {"name": "rack-7"},
        "spec": {"numNodes": 4, "channel": channel},
    }
    await e2e.api.create(COMPUTE_DOMAINS, e2e.namespace, body)
    lws = await e2e.child(LEADER_WORKER_SETS, "rack")
    for pod, server in pod_claims(lws):
        assert pod == [{"name": CLAIM, "resourceClaimTemplateName": "rack-7-imex"}]
        assert server == [{"name": CLAIM}]
    # Someone else's ComputeDomain: read, never changed, and none of the operator's own made.
    existing = await e2e.get(COMPUTE_DOMAINS, "rack-7")
    assert existing is not None
    assert "ownerReferences" not in existing["metadata"]
    assert existing["spec"]["numNodes"] == 4
    assert await e2e.get(COMPUTE_DOMAINS, "rack") is None
    nim = await e2e.status_where(
        "rack",
        lambda o: "computeDomainStatus" in (o.get("status") or {}),
        "status.computeDomainStatus of the named ComputeDomain",
    )
    assert nim["status"]["computeDomainStatus"] == {"name": "rack-7"}
