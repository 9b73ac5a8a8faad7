"""End-to-end: the GatewayRouted condition, with the real operator process on the emulator.

The gateway is the Deployment manifests/gateway ships (built with kustomize), created in
nimstack-system as `kubectl apply` would; the emulator's stand-in controllers make its pods and
the NIMService's ready (nothing runs them: the operator reads only what the API says). A cluster
and an operator of this module's own, so that no other test's NIMServices see the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nim_operator.kube import KubeClient, ResourceKind
from tests.operator.test_operator_e2e import NIMSERVICES, condition, cpu_spec
from tests.support.gateway_install import GATEWAY_NAMESPACE, build_with_gateway
from tests.support.kmock_cluster import EmulatedCluster, project_crds
from tests.support.kmock_harness import (
    EmulatedControllers,
    OperatorProcess,
    PodState,
    connection_from_kubeconfig,
    eventually,
)

DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
NAMESPACE = "gwstatus-team"
MODEL = "team/tiny"


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster(project_crds()) as emulated:
        yield emulated


def gateway_deployment() -> dict[str, Any]:
    (deployment,) = [
        d
        for d in build_with_gateway()
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "nim-gateway"
    ]
    return deployment


async def test_gateway_routed_follows_the_gateway_and_the_replicas(
    cluster: EmulatedCluster, tmp_path: Path
) -> None:
    admin = KubeClient(
        connection_from_kubeconfig(cluster.write_kubeconfig(tmp_path / "admin")),
        user_agent="gateway-status-test",
    )
    for name in (NAMESPACE, GATEWAY_NAMESPACE):
        await admin.create(NAMESPACES, None, {"metadata": {"name": name}})
    operator = OperatorProcess(
        cluster.write_kubeconfig(tmp_path / "operator"),
        tmp_path / "operator.log",
        namespaces=NAMESPACE,
        reconcile_interval="1",
        child_event_delay="0.2",
        gateway_ttl="0.5",
        verbose="true",
    )
    controllers = EmulatedControllers(admin)

    async def routed(test: Any, what: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            nim = await admin.get(NIMSERVICES, NAMESPACE, "llm")
            return (
                condition(nim, "GatewayRouted") if test(condition(nim, "GatewayRouted")) else None
            )

        found: dict[str, Any] = await eventually(
            probe, within=30, what=what, context=operator.log_tail
        )
        return found

    operator.start()
    try:
        body = {
            "apiVersion": "nimstack.dev/v1alpha1",
            "kind": "NIMService",
            "metadata": {"name": "llm"},
            "spec": cpu_spec(model={"servedName": MODEL}),
        }
        await admin.create(NIMSERVICES, NAMESPACE, body)

        async def status_written() -> dict[str, Any] | None:
            nim = await admin.get(NIMSERVICES, NAMESPACE, "llm")
            return nim if condition(nim, "Ready") else None

        nim = await eventually(
            status_written, within=30, what="a status", context=operator.log_tail
        )
        # No gateway in the cluster: no condition about one, over several timer reconciles.
        assert condition(nim, "GatewayRouted") == {}
        for _ in range(6):
            await asyncio.sleep(0.5)
            nim = await admin.get(NIMSERVICES, NAMESPACE, "llm")
            assert condition(nim, "GatewayRouted") == {}

        gateway = gateway_deployment()
        await admin.create(DEPLOYMENTS, GATEWAY_NAMESPACE, gateway)
        found = await routed(lambda c: c.get("reason") == "GatewayNotReady", "GatewayNotReady")
        assert found["status"] == "False"
        assert found["message"] == (
            "nim-gateway nimstack-system/nim-gateway watches namespace gwstatus-team but has no "
            "ready replica"
        )

        await controllers.pods_become(GATEWAY_NAMESPACE, "nim-gateway", PodState.READY)
        found = await routed(lambda c: c.get("reason") == "NoReadyReplica", "NoReadyReplica")
        assert found["status"] == "False"
        assert f"knows model {MODEL} but answers 503" in found["message"]

        # Scaling to zero when idle, it is woken by the gateway instead.
        await admin.merge_patch(NIMSERVICES, NAMESPACE, "llm", {"spec": {"scaleToZeroAfter": 600}})
        found = await routed(lambda c: c.get("reason") == "WakesOnRequest", "WakesOnRequest")
        assert found["status"] == "True"
        await admin.merge_patch(NIMSERVICES, NAMESPACE, "llm", {"spec": {"scaleToZeroAfter": None}})
        await routed(lambda c: c.get("reason") == "NoReadyReplica", "NoReadyReplica again")

        await controllers.pods_become(NAMESPACE, "llm", PodState.READY)
        found = await routed(lambda c: c.get("status") == "True", "Routed")
        assert found["reason"] == "Routed"
        assert found["message"] == (
            f"nim-gateway nimstack-system/nim-gateway routes model {MODEL} to 1 ready replica"
        )

        # The gateway narrowed to other namespaces (its pod template, as a user would edit it).
        live = await admin.get(DEPLOYMENTS, GATEWAY_NAMESPACE, "nim-gateway")
        assert live is not None
        (container,) = live["spec"]["template"]["spec"]["containers"]
        for item in container["env"]:
            if item["name"] == "NIM_GATEWAY_NAMESPACES":
                item["value"] = "team-x,team-y"
        template = {"spec": {"containers": [container]}}
        patch = {"spec": {"template": template}}
        await admin.merge_patch(DEPLOYMENTS, GATEWAY_NAMESPACE, "nim-gateway", patch)
        found = await routed(
            lambda c: c.get("reason") == "NamespaceNotWatched", "NamespaceNotWatched"
        )
        assert found["status"] == "False"

        await admin.delete(DEPLOYMENTS, GATEWAY_NAMESPACE, "nim-gateway")

        async def no_condition() -> bool:
            nim = await admin.get(NIMSERVICES, NAMESPACE, "llm")
            return condition(nim, "GatewayRouted") == {}

        await eventually(
            no_condition,
            within=30,
            what="the condition gone with the gateway",
            context=operator.log_tail,
        )
        await admin.delete(NIMSERVICES, NAMESPACE, "llm")

        async def deleted() -> bool:
            return await admin.get(NIMSERVICES, NAMESPACE, "llm") is None

        await eventually(deleted, within=30, what="llm deleted", context=operator.log_tail)
    finally:
        operator.stop()
        await admin.close()
