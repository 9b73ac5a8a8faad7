"""End-to-end: spec.multiNode with the real operator process (on kmock, or a real cluster with
KUBECONFIG).

LeaderWorkerSets need their CRD: on kmock the first test starts without it (the NIMService is
Failed with reason LeaderWorkerSetMissing, and nothing is deployed), then installs it and sees
the LeaderWorkerSet appear; on a real cluster it uses what is installed and installs nothing.
No LWS controller runs on kmock, and no GPU exists here: the test plays the controller by
writing the LeaderWorkerSet's status as the controller would once a group is ready, and checks
that the NIMService's readiness follows it.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from nim_operator.kube import KubeClient, ResourceKind
from tests.operator.test_operator_e2e import (
    DEPLOYMENTS,
    E2E,
    NIMSERVICES,
    SERVICES,
    condition,
    cpu_spec,
)
from tests.support.kmock_cluster import EmulatedCluster
from tests.support.kmock_harness import (
    OperatorProcess,
    PodState,
    delete_namespace,
    eventually,
    install_crds,
)
from tests.support.leaderworkerset import LEADER_WORKER_SET_CRD

LEADER_WORKER_SETS = ResourceKind("leaderworkerset.x-k8s.io/v1", "leaderworkersets")
NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
SLOW_PREFIX = "nimlws-"
SECRETS = ResourceKind("v1", "secrets")
ROLE = "nim-llm-role"
# Long enough for several of the test operator's timer ticks (a kept workload must survive them).
HANDOVER_WATCH = 3.0

# A NIMService as NVIDIA's multi-node sample writes it (only apiVersion differs): Llama 3.1
# 405B over two pods of eight GPUs, the model on a shared ReadWriteMany claim.
NVIDIA_MULTI_NODE: dict[str, Any] = {
    "image": {
        "repository": "nvcr.io/nim/meta/llama-3.1-405b-instruct",
        "tag": "1.3.0",
        "pullPolicy": "IfNotPresent",
        "pullSecrets": ["ngc-secret"],
    },
    "authSecret": "ngc-api-secret",
    "storage": {
        "pvc": {
            "create": True,
            "storageClass": "nfs",
            "size": "1000Gi",
            "volumeAccessMode": "ReadWriteMany",
        }
    },
    "replicas": 1,
    "resources": {"limits": {"nvidia.com/gpu": 8}},
    "expose": {"service": {"type": "ClusterIP", "port": 8000}},
    "multiNode": {
        "backendType": "lws",
        "parallelism": {"tensor": 8, "pipeline": 2},
        "mpi": {"mpiStartTimeout": 6000},
    },
}


@pytest.fixture
def install_lws(api: KubeClient, emulated: EmulatedCluster | None) -> Callable[[], Awaitable[None]]:
    """Install the LeaderWorkerSet CRD, on the emulator only.

    It stays for the package's later tests, as the Gateway API CRDs do: taking a kind out of the
    emulator's discovery again does not hold while operators still watch it (the emulator lists
    a kind that is asked for as served, without verbs).
    """

    async def install() -> None:
        assert emulated is not None, "only the emulator gets a CRD from a test"
        await install_crds(api, [LEADER_WORKER_SET_CRD], field_manager="nimstack-e2e")

    return install


async def lws_served(api: KubeClient) -> bool:
    return await api.has_resource("leaderworkerset.x-k8s.io/v1", "leaderworkersets")


def env_value(container: dict[str, Any], name: str) -> str | None:
    for entry in container.get("env") or []:
        if entry["name"] == name:
            return str(entry["value"]) if "value" in entry else None
    return None


async def present(e2e: E2E, kind: ResourceKind, name: str) -> bool:
    return await e2e.get(kind, name) is not None


async def ngc_secret(e2e: E2E) -> None:
    data = {"NGC_API_KEY": base64.b64encode(b"not-a-real-key").decode()}
    secret = {"metadata": {"name": "ngc-api-secret"}, "data": data}
    await e2e.api.create(SECRETS, e2e.namespace, {"apiVersion": "v1", "kind": "Secret", **secret})


async def test_nvidia_multi_node_waits_for_the_lws_crd_then_runs_as_a_leader_worker_set(
    e2e: E2E, emulated: EmulatedCluster | None, install_lws: Callable[[], Awaitable[None]]
) -> None:
    served = await lws_served(e2e.api)
    if not served and emulated is None:
        pytest.skip(
            "this cluster has no LeaderWorkerSet CRD (the test installs none on a real one)"
        )
    await ngc_secret(e2e)
    await e2e.create("big", NVIDIA_MULTI_NODE)
    if not served:
        nim = await e2e.status_where(
            "big",
            lambda o: condition(o, "Failed").get("reason") == "LeaderWorkerSetMissing",
            "Failed LeaderWorkerSetMissing",
        )
        assert condition(nim, "Failed")["status"] == "True"
        assert "leaderworkerset.x-k8s.io/v1" in condition(nim, "Failed")["message"]
        assert condition(nim, "Ready")["status"] == "False"
        # Nothing to run the server in: nothing deployed, and no crash loop meanwhile.
        assert await e2e.get(DEPLOYMENTS, "big") is None
        assert e2e.operator.alive()
        await install_lws()

    lws = await e2e.child(LEADER_WORKER_SETS, "big")
    owner = await e2e.get(NIMSERVICES, "big")
    assert owner is not None
    assert lws["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    assert lws["spec"]["replicas"] == 1
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2
    leader = group["leaderTemplate"]["spec"]["containers"][0]
    worker = group["workerTemplate"]["spec"]["containers"][0]
    for container in (leader, worker):
        assert container["image"] == "nvcr.io/nim/meta/llama-3.1-405b-instruct:1.3.0"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert env_value(container, "NIM_MULTI_NODE") == "1"
        assert env_value(container, "NIM_PIPELINE_PARALLEL_SIZE") == "2"
    assert env_value(leader, "NIM_LEADER_ROLE") == "1"
    assert env_value(leader, "CLUSTER_START_TIMEOUT") == "6000"
    assert env_value(worker, "NIM_LEADER_ROLE") == "0"
    claim = group["workerTemplate"]["spec"]["volumes"][0]["persistentVolumeClaim"]
    assert claim["claimName"] == "big-pvc"
    assert await e2e.get(DEPLOYMENTS, "big") is None

    service = await e2e.child(SERVICES, "big")
    assert service["spec"]["selector"][ROLE] == "leader"

    # The status written while the CRD was missing (Failed) may still be there: wait for the
    # one written after the LeaderWorkerSet was applied.
    nim = await e2e.status_where(
        "big",
        lambda o: condition(o, "Failed").get("status") == "False",
        "no longer Failed once the LeaderWorkerSet exists",
    )
    assert condition(nim, "Ready")["status"] == "False"

    # The LWS controller's part: the group is up (all of its pods ready).
    status = {"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    await e2e.api.merge_patch(
        LEADER_WORKER_SETS, e2e.namespace, "big", {"status": status}, subresource="status"
    )
    nim = await e2e.status_where(
        "big", lambda o: condition(o, "Ready").get("status") == "True", "Ready from the LWS"
    )
    assert nim["status"]["readyReplicas"] == 1
    assert condition(nim, "Ready")["reason"] == "ReplicasReady"
    assert nim["status"]["state"] == "Ready"


async def test_switching_multi_node_on_and_off_hands_over_without_a_gap(
    e2e: E2E, emulated: EmulatedCluster | None, install_lws: Callable[[], Awaitable[None]]
) -> None:
    """The old shape's workload serves until the new one has a ready replica, then goes."""
    if not await lws_served(e2e.api):
        if emulated is None:
            pytest.skip("this cluster has no LeaderWorkerSet CRD (the test installs none)")
        await install_lws()
    await e2e.create("swap", cpu_spec())
    await e2e.child(DEPLOYMENTS, "swap")
    await e2e.driver.pods_become(e2e.namespace, "swap", PodState.READY)

    async def selector() -> dict[str, str]:
        service = await e2e.get(SERVICES, "swap")
        assert service is not None
        return dict(service["spec"]["selector"])

    await e2e.patch_spec("swap", {"gpu": None, "multiNode": {"parallelism": {"pipeline": 3}}})
    lws = await e2e.child(LEADER_WORKER_SETS, "swap")
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 3
    # No group ready yet: the Deployment keeps serving, and the Service keeps selecting its
    # pods (the leaders too; workers have no api port, so they are no endpoints).
    await e2e.stays(
        lambda: present(e2e, DEPLOYMENTS, "swap"),
        "the Deployment kept while no group is ready",
        seconds=HANDOVER_WATCH,
    )
    assert ROLE not in await selector()

    # The LWS controller's part: a group is ready. Then, and only then, the Deployment goes.
    status = {"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    await e2e.api.merge_patch(
        LEADER_WORKER_SETS, e2e.namespace, "swap", {"status": status}, subresource="status"
    )
    await e2e.deleted(DEPLOYMENTS, "swap")

    async def leaders_selected() -> bool:
        return (await selector()).get(ROLE) == "leader"

    await e2e.until(leaders_selected, "the Service selecting the leaders")

    # Back to one pod per replica: the LeaderWorkerSet serves until the Deployment is ready.
    await e2e.patch_spec("swap", {"gpu": {"count": 0}, "multiNode": None})
    await e2e.child(DEPLOYMENTS, "swap")

    async def all_pods_selected() -> bool:
        return ROLE not in await selector()

    await e2e.until(all_pods_selected, "the Service selecting every pod again")
    await e2e.stays(
        lambda: present(e2e, LEADER_WORKER_SETS, "swap"),
        "the LeaderWorkerSet kept while the Deployment has no ready pod",
        seconds=HANDOVER_WATCH,
    )
    await e2e.driver.pods_become(e2e.namespace, "swap", PodState.READY)
    await e2e.deleted(LEADER_WORKER_SETS, "swap")


def leader_and_worker(lws: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    group = lws["spec"]["leaderWorkerTemplate"]
    return (
        group["leaderTemplate"]["spec"]["containers"][0],
        group["workerTemplate"]["spec"]["containers"][0],
    )


async def test_the_ray_start_up_follows_ray_port(
    e2e: E2E, emulated: EmulatedCluster | None, install_lws: Callable[[], Awaitable[None]]
) -> None:
    """nim-serve's image with multiNode.ray: its Ray head and workers on rayPort, and a change
    of the port (or back to no ray) reaches the LeaderWorkerSet."""
    if not await lws_served(e2e.api):
        if emulated is None:
            pytest.skip("this cluster has no LeaderWorkerSet CRD (the test installs none)")
        await install_lws()
    multi_node = {"parallelism": {"pipeline": 2}, "ray": {"rayPort": 7000}}
    await e2e.create("rayed", {**cpu_spec(multiNode=multi_node), "gpu": {"count": 1}})
    leader, worker = leader_and_worker(await e2e.child(LEADER_WORKER_SETS, "rayed"))
    assert "ray start --head --port=7000 " in leader["command"][2]
    assert {"name": "ray", "containerPort": 7000, "protocol": "TCP"} in leader["ports"]
    assert '--address="$LWS_LEADER_ADDRESS:7000"' in worker["command"][2]
    assert "7000" in worker["startupProbe"]["exec"]["command"][2]

    await e2e.patch_spec("rayed", {"multiNode": {"ray": {"rayPort": 7001}}})

    async def on_7001() -> bool:
        lws = await e2e.get(LEADER_WORKER_SETS, "rayed")
        if lws is None:
            return False
        leader, worker = leader_and_worker(lws)
        return (
            "--port=7001 " in leader["command"][2]
            and {"name": "ray", "containerPort": 7001, "protocol": "TCP"} in leader["ports"]
            and ":7001" in worker["command"][2]
        )

    await e2e.until(on_7001, "the LeaderWorkerSet on the new Ray port")

    # Without `ray`, nim-serve's Ray keeps its default port and the worker its plain start.
    await e2e.patch_spec("rayed", {"multiNode": {"ray": None}})

    async def ray_gone() -> bool:
        lws = await e2e.get(LEADER_WORKER_SETS, "rayed")
        if lws is None:
            return False
        leader, worker = leader_and_worker(lws)
        return (
            "--port=6379 " in leader["command"][2]
            and all(p["name"] != "ray" for p in leader["ports"])
            and "startupProbe" not in worker
        )

    await e2e.until(ray_gone, "the LeaderWorkerSet without the Ray start-up")


@pytest.fixture(scope="module")
def slow_timer_operator(
    kubeconfig: Path, crds_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """A second operator whose timer never fires during a test: what it does, an event caused."""
    process = OperatorProcess(
        kubeconfig,
        tmp_path_factory.mktemp("lws-slow-timer") / "operator.log",
        namespaces=f"{SLOW_PREFIX}*",
        reconcile_interval="600",
        child_event_delay="0.2",
        verbose="true",
    )
    process.start()
    yield process
    process.stop()


@pytest_asyncio.fixture
async def slow_namespace(
    api: KubeClient, slow_timer_operator: OperatorProcess
) -> AsyncIterator[str]:
    name = f"{SLOW_PREFIX}{secrets.token_hex(4)}"
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    await api.create(NAMESPACES, None, namespace)
    yield name
    await delete_namespace(api, name)


async def test_the_leader_worker_set_is_watched(
    api: KubeClient,
    emulated: EmulatedCluster | None,
    slow_timer_operator: OperatorProcess,
    slow_namespace: str,
    install_lws: Callable[[], Awaitable[None]],
) -> None:
    """A group becoming ready and a deleted LeaderWorkerSet are acted on at once, with no timer
    tick (kopf watches the kind where its CRD is installed, also one installed after it started).
    """
    if emulated is None:
        pytest.skip("needs a cluster where the test may install the LeaderWorkerSet CRD")
    if not await lws_served(api):
        await install_lws()
    ns = slow_namespace
    body = {"apiVersion": "nimstack.dev/v1alpha1", "kind": "NIMService", "metadata": {"name": "g"}}
    spec = {**cpu_spec(multiNode={"parallelism": {"pipeline": 2}}), "gpu": {"count": 1}}
    await api.create(NIMSERVICES, ns, {**body, "spec": spec})

    async def lws() -> dict[str, Any] | None:
        return await api.get(LEADER_WORKER_SETS, ns, "g")

    first = await eventually(lws, within=15, what="the LeaderWorkerSet")
    status = {"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    await api.merge_patch(LEADER_WORKER_SETS, ns, "g", {"status": status}, subresource="status")

    async def ready() -> bool:
        nim = await api.get(NIMSERVICES, ns, "g")
        return condition(nim, "Ready").get("status") == "True"

    log = slow_timer_operator.log_tail
    await eventually(ready, within=15, what="Ready from the LWS's event", context=log)

    await api.delete(LEADER_WORKER_SETS, ns, "g")

    async def replaced() -> bool:
        live = await lws()
        return live is not None and live["metadata"]["uid"] != first["metadata"]["uid"]

    await eventually(replaced, within=15, what="the LeaderWorkerSet re-created", context=log)
