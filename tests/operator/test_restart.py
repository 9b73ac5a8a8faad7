"""The operator killed mid-reconcile (SIGKILL: no cleanup) and started again converges, with
exactly one of each child.

The real operator (`python -m nim_operator`) runs against an emulator of its own. To kill it at
a known point, the emulator holds one of its writes (the Service apply of an update, or the
Deployment apply of a creation) until the process is dead, then fails it, so the dead process's
write is never stored. The timer is 60 s: convergence after the restart comes from kopf resuming
the NIMService, not from a timer tick.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import pytest_asyncio

from nim_operator.kube import KubeClient, ResourceKind
from tests.operator.test_operator_e2e import condition, cpu_spec
from tests.support.kmock_cluster import EmulatedCluster, project_crds
from tests.support.kmock_harness import (
    OperatorProcess,
    connection_from_kubeconfig,
    delete_namespace,
    eventually,
)

PREFIX = "restart-"
NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
SERVICES = ResourceKind("v1", "services")
CHILD_KINDS = {
    "ServiceAccount": ResourceKind("v1", "serviceaccounts"),
    "PersistentVolumeClaim": ResourceKind("v1", "persistentvolumeclaims"),
    "Deployment": DEPLOYMENTS,
    "Service": SERVICES,
    "HorizontalPodAutoscaler": ResourceKind("autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ResourceKind("policy/v1", "poddisruptionbudgets"),
}
SELECTOR = "app.kubernetes.io/instance=llm"
UNAVAILABLE = kmock.Response(
    status=503,
    payload={"kind": "Status", "code": 503, "reason": "ServiceUnavailable", "message": "gone"},
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster(project_crds()) as emulated:
        yield emulated


@pytest.fixture
def kubeconfig(cluster: EmulatedCluster, tmp_path: Path) -> Path:
    return cluster.write_kubeconfig(tmp_path / "kubeconfig")


def operator_process(kubeconfig: Path, log: Path) -> OperatorProcess:
    return OperatorProcess(
        kubeconfig,
        log,
        namespaces=f"{PREFIX}*",
        reconcile_interval="60",
        child_event_delay="0.2",
        verbose="true",
    )


@pytest_asyncio.fixture(loop_scope="session")
async def kube(kubeconfig: Path) -> AsyncIterator[KubeClient]:
    client = KubeClient(connection_from_kubeconfig(kubeconfig), user_agent="restart-test")
    yield client
    await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def namespace(kube: KubeClient) -> AsyncIterator[str]:
    name = f"{PREFIX}{secrets.token_hex(4)}"
    await kube.create(NAMESPACES, None, {"metadata": {"name": name}})
    yield name
    for nim in await kube.list(NIMSERVICES, name):  # no operator left to release finalizers
        await kube.merge_patch(
            NIMSERVICES, name, nim["metadata"]["name"], {"metadata": {"finalizers": None}}
        )
    await delete_namespace(kube, name)


class Hold:
    """Hold the next apply of a child until released, then fail it (nothing stored).

    `applying` tells the apply meant from any other (a reconcile of the previous generation may
    still be running when the hold is set up).
    """

    def __init__(
        self,
        cluster: EmulatedCluster,
        resource: str,
        ns: str,
        applying: Callable[[dict[str, Any]], bool] = lambda _: True,
    ):
        self.arrived = threading.Event()
        self.released = threading.Event()

        def matches(request: kmock.Request) -> bool:
            return (
                request.method == kmock.method.PATCH
                and request.resource is not None
                and request.resource.plural == resource
                and request.namespace == ns
                and isinstance(request.data, dict)
                and applying(request.data)
            )

        async def hold(request: kmock.Request) -> kmock.Response:
            self.arrived.set()
            await asyncio.to_thread(self.released.wait, 60)
            return UNAVAILABLE

        cluster.inspect(lambda emulator: emulator.add_fault(1, matches, hold))

    async def wait_arrived(self, within: float = 30) -> None:
        async def arrived() -> bool:
            return self.arrived.is_set()

        await eventually(arrived, within=within, what="the held request")


async def create(kube: KubeClient, namespace: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": "llm"},
    }
    await kube.create(NIMSERVICES, namespace, {**body, "spec": spec})


# kopf's record of a handler still in progress, one annotation per handler.
PROGRESS_PREFIX = "nimstack.dev/reconcile_on_"


async def converged_at(
    kube: KubeClient, operator: OperatorProcess, namespace: str, generation: int, port: int
) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        nim = await kube.get(NIMSERVICES, namespace, "llm")
        service = await kube.get(SERVICES, namespace, "llm")
        if nim is None or service is None:
            return None
        observed = (nim.get("status") or {}).get("observedGeneration") == generation
        # kopf is done with its handlers too: a queued run (a resume's) can converge the
        # children and the status before kopf's own handler of the same change has returned.
        annotations = nim["metadata"].get("annotations") or {}
        handled = not any(key.startswith(PROGRESS_PREFIX) for key in annotations)
        converged = observed and handled and service["spec"]["ports"][0]["port"] == port
        return nim if converged else None

    return await eventually(
        done, within=30, what=f"generation {generation}", context=operator.log_tail
    )


async def children(kube: KubeClient, namespace: str) -> dict[str, list[dict[str, Any]]]:
    return {
        kind: await kube.list(resource, namespace, label_selector=SELECTOR)
        for kind, resource in CHILD_KINDS.items()
    }


def assert_one_of_each(found: dict[str, list[dict[str, Any]]], expected: set[str]) -> None:
    counts = {kind: len(items) for kind, items in found.items()}
    assert counts == {kind: int(kind in expected) for kind in CHILD_KINDS}, counts


def assert_status_converged(nim: dict[str, Any], generation: int) -> None:
    status = nim["status"]
    assert {c["observedGeneration"] for c in status["conditions"]} == {generation}
    assert condition(nim, "Failed")["status"] == "False"
    # kopf finished the handler: no progress record of an interrupted run is left behind.
    annotations = nim["metadata"].get("annotations") or {}
    assert not [key for key in annotations if key.startswith(PROGRESS_PREFIX)], annotations


async def test_killed_between_two_applies_of_an_update(
    cluster: EmulatedCluster, kubeconfig: Path, kube: KubeClient, namespace: str, tmp_path: Path
) -> None:
    first = operator_process(kubeconfig, tmp_path / "operator.log")
    first.start()
    hold: Hold | None = None
    try:
        await create(kube, namespace, cpu_spec(replicas=2))
        await converged_at(kube, first, namespace, generation=1, port=8000)

        # The update: Deployment first (new image, 3 replicas), then the Service (new port).
        hold = Hold(
            cluster, "services", namespace, lambda svc: svc["spec"]["ports"][0]["port"] == 9000
        )
        update = {"image": {"tag": "3.9"}, "replicas": 3, "expose": {"service": {"port": 9000}}}
        await kube.merge_patch(NIMSERVICES, namespace, "llm", {"spec": update})
        await hold.wait_arrived()
        deployment = await kube.get(DEPLOYMENTS, namespace, "llm")
        service = await kube.get(SERVICES, namespace, "llm")
        assert deployment is not None
        assert service is not None
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":3.9")
        assert service["spec"]["ports"][0]["port"] == 8000  # half-way: the moment to die
        first.kill()
    finally:
        if hold is not None:
            hold.released.set()
        if first.alive():
            first.kill()

    second = operator_process(kubeconfig, tmp_path / "operator.log")
    second.start()
    try:
        nim = await converged_at(kube, second, namespace, generation=2, port=9000)
        found = await children(kube, namespace)
    finally:
        second.stop()
    assert_one_of_each(found, {"ServiceAccount", "Deployment", "Service", "PodDisruptionBudget"})
    (deployment,) = found["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":3.9")
    assert_status_converged(nim, generation=2)


async def test_killed_during_the_first_reconcile(
    cluster: EmulatedCluster, kubeconfig: Path, kube: KubeClient, namespace: str, tmp_path: Path
) -> None:
    first = operator_process(kubeconfig, tmp_path / "operator.log")
    first.start()
    hold = Hold(cluster, "deployments", namespace)
    try:
        await create(kube, namespace, cpu_spec(storage={"pvc": {"create": True, "size": "1Gi"}}))
        await hold.wait_arrived()
        # The ServiceAccount and the PVC are applied, the Deployment is not.
        half_way = await children(kube, namespace)
        assert_one_of_each(half_way, {"ServiceAccount", "PersistentVolumeClaim"})
        first.kill()
    finally:
        hold.released.set()
        if first.alive():
            first.kill()

    second = operator_process(kubeconfig, tmp_path / "operator.log")
    second.start()
    try:
        nim = await converged_at(kube, second, namespace, generation=1, port=8000)
        found = await children(kube, namespace)
    finally:
        second.stop()
    assert_one_of_each(found, {"ServiceAccount", "PersistentVolumeClaim", "Deployment", "Service"})
    assert_status_converged(nim, generation=1)
