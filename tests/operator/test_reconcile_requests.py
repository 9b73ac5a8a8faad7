"""What one reconcile asks the API server, counted by the emulator (the operator benchmark's
finding: every request costs a timer tick, for every NIMService, every interval).

A run that changes nothing - a timer tick - applies the children it renders (server-side apply
is how drift is undone) and lists the pods, and nothing else: no GET per optional child that is
off (it was found absent once), no GET of the Deployment the apply has just returned. With
kopf's child watches (the operator), a tick skips the applies the watch proves to be no-ops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import kopf
import pytest
import pytest_asyncio

from nim_operator.events import EventNote
from nim_operator.handlers import reconcile_on_resume, reconcile_owner_of_child
from nim_operator.kube import CapabilityCache, KubeClient, ResourceKind
from nim_operator.pod_cache import PodCache
from nim_operator.reconcile import APPLY_EVERY_RUNS, Outcome, Runtime, reconcile
from nim_operator.render.labels import INSTANCE_LABEL
from nim_operator.settings import Settings
from tests.support.kmock_cluster import EmulatedCluster
from tests.support.kmock_harness import EmulatedControllers, PodState, connection_from_kubeconfig

NS = "models"
NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
PDBS = ResourceKind("policy/v1", "poddisruptionbudgets")
SERVICES = ResourceKind("v1", "services")
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
LOGGER = logging.getLogger("test")
CPU_SPEC: dict[str, Any] = {
    "image": {"repository": "registry.k8s.io/pause", "tag": "3.10"},
    "gpu": {"count": 0},
}


def _ignore_events(body: Mapping[str, Any], notes: Sequence[EventNote]) -> None:
    return None


@pytest_asyncio.fixture(loop_scope="session")
async def kube(cluster: EmulatedCluster, tmp_path: Path) -> AsyncIterator[KubeClient]:
    client = KubeClient(connection_from_kubeconfig(cluster.write_kubeconfig(tmp_path / "kc")))
    yield client
    await client.close()


@pytest.fixture
def runtime(kube: KubeClient) -> Runtime:
    # The ServiceMonitor capability is cached for the test's length, as it is for 5 minutes in
    # the operator: its discovery request is not part of a run.
    settings = Settings(capability_ttl=300)
    return Runtime(kube, settings, CapabilityCache(kube, ttl=300), post_events=_ignore_events)


def served(cluster: EmulatedCluster, since: int) -> list[tuple[str, str, str]]:
    """(method, resource, subresource) of each request the emulator served from `since` on."""

    def read(emulator: Any) -> list[tuple[str, str, str]]:
        return [
            (
                str(request.method.value),
                request.resource.plural if request.resource else "",
                request.subresource or "",
            )
            for request in emulator._requests[since:]
        ]

    return cluster.inspect(read)


def count(cluster: EmulatedCluster) -> int:
    return cluster.inspect(lambda emulator: len(emulator._requests))


async def create(kube: KubeClient, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }
    return await kube.create(NIMSERVICES, NS, body)


async def fresh(kube: KubeClient, name: str) -> dict[str, Any]:
    body = await kube.get(NIMSERVICES, NS, name)
    assert body is not None
    return body


async def test_a_run_that_changes_nothing_applies_and_lists_pods_only(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    body = await create(kube, "llm", {**CPU_SPEC, "replicas": 1})
    mark = count(cluster)
    await reconcile(runtime, body, logger=LOGGER)
    first = served(cluster, mark)
    # The first run looks for the optional children that are off (HPA, PDB for one replica,
    # the default PVC) and writes the status.
    looked_up = {resource for method, resource, _ in first if method == "GET"}
    assert {"horizontalpodautoscalers", "poddisruptionbudgets", "persistentvolumeclaims"} <= (
        looked_up
    )
    assert ("PATCH", "nimservices", "status") in first

    body = await fresh(kube, "llm")
    mark = count(cluster)
    outcome = await reconcile(runtime, body, logger=LOGGER)
    assert outcome is not None
    assert outcome.failure is None
    assert sorted(served(cluster, mark)) == [
        ("GET", "pods", ""),  # the list, for the status
        ("PATCH", "deployments", ""),
        ("PATCH", "serviceaccounts", ""),
        ("PATCH", "services", ""),
    ]


async def test_the_status_reads_the_deployment_the_apply_returned(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    body = await create(kube, "llm", {**CPU_SPEC, "replicas": 1})
    await reconcile(runtime, body, logger=LOGGER)
    # The Deployment controller and the kubelet: a ready pod, and the Deployment's status.
    await EmulatedControllers(kube).pods_become(NS, "llm", PodState.READY)

    body = await fresh(kube, "llm")
    mark = count(cluster)
    outcome = await reconcile(runtime, body, logger=LOGGER)
    assert outcome is not None
    assert ("GET", "deployments", "") not in served(cluster, mark)
    # The apply's answer carried the status the controller wrote.
    assert outcome.status["readyReplicas"] == 1
    ready = {c["type"]: c for c in outcome.status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "ReplicasReady")


async def test_a_child_found_absent_is_still_deleted_after_its_feature_was_on_again(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    body = await create(kube, "llm", {**CPU_SPEC, "replicas": 1})
    await reconcile(runtime, body, logger=LOGGER)  # no PDB for one replica: found absent
    await kube.merge_patch(NIMSERVICES, NS, "llm", {"spec": {"replicas": 2}})
    await reconcile(runtime, await fresh(kube, "llm"), logger=LOGGER)
    assert await kube.get(PDBS, NS, "llm") is not None  # applied: no longer "absent"

    await kube.merge_patch(NIMSERVICES, NS, "llm", {"spec": {"replicas": 1}})
    await reconcile(runtime, await fresh(kube, "llm"), logger=LOGGER)
    assert await kube.get(PDBS, NS, "llm") is None


async def test_a_new_operator_process_looks_for_optional_children_again(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    body = await create(kube, "llm", {**CPU_SPEC, "replicas": 2})
    await reconcile(runtime, body, logger=LOGGER)
    assert await kube.get(PDBS, NS, "llm") is not None
    # The spec changes while the operator is down; the next process has no memory of the PDB.
    await kube.merge_patch(NIMSERVICES, NS, "llm", {"spec": {"replicas": 1}})
    restarted = Runtime(
        kube, runtime.settings, CapabilityCache(kube, ttl=300), post_events=_ignore_events
    )
    await reconcile(restarted, await fresh(kube, "llm"), logger=LOGGER)
    assert await kube.get(PDBS, NS, "llm") is None


async def test_a_listed_pod_queues_a_run_only_once_a_run_of_its_owner_has_read(
    kube: KubeClient, runtime: Runtime
) -> None:
    """kopf's startup listing (events of type None) queues no run of a NIMService that no run
    has read yet: the run its resume queued, waiting its turn, reads the pods itself. Once a run
    has read, a listed pod may say what that run did not see, and queues one."""
    body = await create(kube, "llm", {**CPU_SPEC, "replicas": 1})
    uid = body["metadata"]["uid"]
    runtime.track(NS, "llm", uid, present=True)
    runtime.slot(uid)  # the run its resume queued has taken its slot and waits for its turn
    pod = {"metadata": {"name": "llm-0", "namespace": NS, "labels": {INSTANCE_LABEL: "llm"}}}
    key = f"{NS}/llm"

    async def listed() -> None:
        await reconcile_owner_of_child(
            body=kopf.Body(pod),
            namespace=NS,
            resource=kopf.Resource("", "v1", "pods"),
            type=None,
            memo=kopf.Memo(runtime=runtime),
            logger=LOGGER,
        )

    try:
        await listed()
        assert runtime.enqueue(key)  # nothing was waiting: the listing queued no run
        runtime.dequeue(key)
        await reconcile(runtime, body, logger=LOGGER)
        await listed()
        assert not runtime.enqueue(key)  # a run is waiting now
    finally:
        await runtime.close()  # cancels the queued run


async def test_a_resume_queues_a_run_that_reads_the_nimservice_itself(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    """A new process resumes every NIMService at once: the handler returns without waiting for
    a turn (no kopf worker and body held meanwhile), and the run it queued reads the NIMService
    when its turn comes."""
    body = await create(kube, "llm", {**CPU_SPEC, "replicas": 1})
    mark = count(cluster)
    await reconcile_on_resume(
        body=kopf.Body(body),
        namespace=NS,
        name="llm",
        uid=body["metadata"]["uid"],
        memo=kopf.Memo(runtime=runtime),
        logger=LOGGER,
    )
    try:
        assert count(cluster) == mark  # returned before any request
        assert not runtime.enqueue(f"{NS}/llm")  # a run is waiting
        for _ in range(100):  # without a request of the test's own
            if runtime.has_read(body["metadata"]["uid"]) and runtime.busy == 0:
                break
            await asyncio.sleep(0.1)
        requests = served(cluster, mark)
        assert requests[0] == ("GET", "nimservices", "")  # the queued run's own read
        assert ("PATCH", "nimservices", "status") in requests
    finally:
        await runtime.close()


async def test_a_timer_tick_takes_the_pods_from_the_watch(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    """With the pod view (fed by kopf's pod watch in the operator), a tick is 3 applies.

    The watch is played here by handing the view what the emulator holds; the status a tick
    computes from it is the one a run that lists computes.
    """
    runtime.pods = PodCache(max_age=600)
    body = await create(kube, "llm", {**CPU_SPEC, "replicas": 1})
    await reconcile(runtime, body, logger=LOGGER)
    await EmulatedControllers(kube).pods_become(NS, "llm", PodState.READY)
    listed = await reconcile(runtime, await fresh(kube, "llm"), logger=LOGGER)  # lists
    assert listed is not None

    mark = count(cluster)
    tick = await reconcile(runtime, await fresh(kube, "llm"), logger=LOGGER, periodic=True)
    assert tick is not None
    assert sorted(served(cluster, mark)) == [
        ("GET", "nimservices", ""),  # fresh(), the test's own read
        ("PATCH", "deployments", ""),
        ("PATCH", "serviceaccounts", ""),
        ("PATCH", "services", ""),
    ]
    assert tick.status == listed.status
    assert tick.status["readyReplicas"] == 1


async def test_a_tick_lists_when_the_view_is_too_old(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    runtime.pods = PodCache(max_age=0.0)
    body = await create(kube, "llm", {**CPU_SPEC, "replicas": 1})
    await reconcile(runtime, body, logger=LOGGER)
    body = await fresh(kube, "llm")
    mark = count(cluster)
    await reconcile(runtime, body, logger=LOGGER, periodic=True)
    assert ("GET", "pods", "") in served(cluster, mark)


def watching(runtime: Runtime) -> Runtime:
    """The runtime as the operator has it: pods and child changes reported by watches.

    The watches are played by the test: it hands `child_changed` each change it makes.
    """
    runtime.pods = PodCache(max_age=600)
    runtime.watches_children = True
    return runtime


@pytest_asyncio.fixture(loop_scope="session")
async def settled(kube: KubeClient, runtime: Runtime) -> Runtime:
    """A watching runtime that has reconciled NIMService "llm" once."""
    runtime = watching(runtime)
    await reconcile(runtime, await create(kube, "llm", CPU_SPEC), logger=LOGGER)
    return runtime


async def reconcile_once_ready(runtime: Runtime, kube: KubeClient) -> Outcome:
    """The pod of NIMService llm turns ready, the Deployment watch says so, a run sees it."""
    await EmulatedControllers(kube).pods_become(NS, "llm", PodState.READY)
    deployment = await kube.get(DEPLOYMENTS, NS, "llm")
    assert deployment is not None
    assert runtime.child_changed("deployments", "MODIFIED", deployment) == "changed"  # status
    outcome = await reconcile(runtime, await fresh(kube, "llm"), logger=LOGGER)
    assert outcome is not None
    return outcome


async def test_a_tick_skips_the_applies_the_watch_proves_unchanged(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    runtime = watching(runtime)
    body = await create(kube, "llm", {**CPU_SPEC, "replicas": 1})
    await reconcile(runtime, body, logger=LOGGER)
    full = await reconcile_once_ready(runtime, kube)

    mark = count(cluster)
    tick = await reconcile(runtime, await fresh(kube, "llm"), logger=LOGGER, periodic=True)
    assert tick is not None
    assert served(cluster, mark) == [("GET", "nimservices", "")]  # the test's own read
    assert tick.status == full.status
    assert tick.status["readyReplicas"] == 1


async def test_the_echo_of_our_own_apply_leaves_the_record_good(
    cluster: EmulatedCluster, kube: KubeClient, settled: Runtime
) -> None:
    service = await kube.get(SERVICES, NS, "llm")
    assert service is not None
    assert settled.child_changed("services", "MODIFIED", service) == "echo"
    someone_elses = {"metadata": {**service["metadata"], "ownerReferences": []}}
    assert settled.child_changed("services", "MODIFIED", someone_elses) == "unknown"


async def test_a_tick_applies_a_child_the_watch_saw_changed(
    cluster: EmulatedCluster, kube: KubeClient, settled: Runtime
) -> None:
    edited = await kube.merge_patch(
        SERVICES, NS, "llm", {"spec": {"ports": [{"name": "api", "port": 9999}]}}
    )
    assert edited is not None
    assert settled.child_changed("services", "MODIFIED", edited) == "changed"

    mark = count(cluster)
    await reconcile(settled, await fresh(kube, "llm"), logger=LOGGER, periodic=True)
    assert ("PATCH", "services", "") in served(cluster, mark)
    assert ("PATCH", "deployments", "") not in served(cluster, mark)
    restored = await kube.get(SERVICES, NS, "llm")
    assert restored is not None
    assert [p["port"] for p in restored["spec"]["ports"]] == [8000]


async def test_a_deleted_child_is_applied_again_by_the_next_tick(
    cluster: EmulatedCluster, kube: KubeClient, settled: Runtime
) -> None:
    service = await kube.get(SERVICES, NS, "llm")
    assert service is not None
    await kube.delete(SERVICES, NS, "llm")
    assert settled.child_changed("services", "DELETED", service) == "changed"
    await reconcile(settled, await fresh(kube, "llm"), logger=LOGGER, periodic=True)
    assert await kube.get(SERVICES, NS, "llm") is not None


async def test_a_spec_change_is_applied_by_a_tick_too(
    cluster: EmulatedCluster, kube: KubeClient, settled: Runtime
) -> None:
    """The record is of a manifest: a different rendering is applied whatever the watch says."""
    await kube.merge_patch(
        NIMSERVICES, NS, "llm", {"spec": {"expose": {"service": {"port": 8080}}}}
    )
    await reconcile(settled, await fresh(kube, "llm"), logger=LOGGER, periodic=True)
    service = await kube.get(SERVICES, NS, "llm")
    assert service is not None
    assert [p["port"] for p in service["spec"]["ports"]] == [8080]


async def test_a_create_handler_run_again_on_the_same_spec_applies_nothing(
    cluster: EmulatedCluster, kube: KubeClient, settled: Runtime
) -> None:
    """kopf runs the create handler a second time when its watch lags behind its own patch."""
    body = await fresh(kube, "llm")
    mark = count(cluster)
    outcome = await reconcile(settled, body, logger=LOGGER)
    assert outcome is not None
    assert outcome.failure is None
    assert served(cluster, mark) == [("GET", "pods", "")]  # the list, for the status


async def test_every_tenth_run_in_a_row_applies_everything(
    cluster: EmulatedCluster, kube: KubeClient, settled: Runtime
) -> None:
    """A watch can lose events across a reconnect; the records are not trusted for ever."""
    body = await fresh(kube, "llm")
    applies = []
    for index in range(2 * (APPLY_EVERY_RUNS + 1)):
        mark = count(cluster)
        await reconcile(settled, body, logger=LOGGER, periodic=index % 2 == 0)
        applies.append(("PATCH", "deployments", "") in served(cluster, mark))
    assert applies == ([False] * APPLY_EVERY_RUNS + [True]) * 2


async def test_reconciles_wait_their_turn(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    """No more runs talk to the API server at once than the setting allows."""
    runtime.settings = Settings(capability_ttl=300, max_concurrent_reconciles=2)
    bodies = [await create(kube, f"llm-{i}", CPU_SPEC) for i in range(6)]
    in_flight, most = 0, 0
    original = kube.apply

    async def counted_apply(*args: Any, **kwargs: Any) -> Any:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.01)  # let every other run that can go reach its apply
            return await original(*args, **kwargs)
        finally:
            in_flight -= 1

    kube.apply = counted_apply  # type: ignore[method-assign]
    outcomes = await asyncio.gather(*(reconcile(runtime, b, logger=LOGGER) for b in bodies))
    assert all(o is not None and o.failure is None for o in outcomes)
    assert most == 2


def status_writes(cluster: EmulatedCluster, since: int) -> int:
    return served(cluster, since).count(("PATCH", "nimservices", "status"))


async def test_a_tick_on_a_body_older_than_our_last_status_write_writes_nothing(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    """kopf hands a timer its latest body, which lags behind our own status writes while its
    watch is behind: the status in it is one we overwrote already, not someone else's edit."""
    runtime = watching(runtime)
    await reconcile(runtime, await create(kube, "llm", {**CPU_SPEC, "replicas": 1}), logger=LOGGER)
    older = await fresh(kube, "llm")  # the status of the first run
    ready = await reconcile_once_ready(runtime, kube)
    assert ready.status["readyReplicas"] == 1
    assert older["status"]["readyReplicas"] == 0  # written since `older` was read

    mark = count(cluster)
    tick = await reconcile(runtime, older, logger=LOGGER, periodic=True)
    assert tick is not None
    assert tick.status == ready.status
    assert status_writes(cluster, mark) == 0
    assert (await fresh(kube, "llm"))["status"]["readyReplicas"] == 1


async def test_a_change_handler_on_the_version_our_status_write_made_writes_nothing(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    """kopf repeats a change handler on a stale body when its watch lags behind its own patch:
    the version our first status write made, whose status we have overwritten since. That
    status is ours, not someone else's edit (which would have made another version)."""
    runtime = watching(runtime)
    await reconcile(runtime, await create(kube, "llm", {**CPU_SPEC, "replicas": 1}), logger=LOGGER)
    ours = await fresh(kube, "llm")  # as our first status write left it
    ready = await reconcile_once_ready(runtime, kube)
    assert ours["status"]["readyReplicas"] == 0  # written over since

    mark = count(cluster)
    repeated = await reconcile(runtime, ours, logger=LOGGER)
    assert repeated is not None
    assert repeated.status == ready.status
    assert status_writes(cluster, mark) == 0
    assert (await fresh(kube, "llm"))["status"]["readyReplicas"] == 1


async def test_a_status_someone_else_changed_is_put_back(
    cluster: EmulatedCluster, kube: KubeClient, settled: Runtime
) -> None:
    """By any run that is not a timer tick of a process that wrote the status itself (a
    change handler, a child event's fresh read), and by a new process's first tick."""
    written = (await fresh(kube, "llm"))["status"]

    async def tamper() -> dict[str, Any]:
        await kube.merge_patch(
            NIMSERVICES, NS, "llm", {"status": {"endpoint": "x"}}, subresource="status"
        )
        return await fresh(kube, "llm")

    mark = count(cluster)
    await reconcile(settled, await tamper(), logger=LOGGER)
    assert status_writes(cluster, mark) == 2  # the tampering and the repair
    assert (await fresh(kube, "llm"))["status"]["endpoint"] == written["endpoint"]

    restarted = watching(
        Runtime(kube, settled.settings, settled.capabilities, post_events=_ignore_events)
    )
    mark = count(cluster)
    await reconcile(restarted, await tamper(), logger=LOGGER, periodic=True)
    assert status_writes(cluster, mark) == 2
    assert (await fresh(kube, "llm"))["status"]["endpoint"] == written["endpoint"]
