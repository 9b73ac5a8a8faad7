"""reconcile() itself, called directly (no kopf) against the API-server emulator over HTTP.

These pin down what the end-to-end tests can only observe from outside: that a second run
changes nothing, who owns Deployment.spec.replicas during the HPA hand-over, that only owned
children are deleted, and how API failures come out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import kmock
import pytest
import pytest_asyncio

from nim_operator.events import EventNote
from nim_operator.heap import HeapTrimmer
from nim_operator.kube import CapabilityCache, KubeClient, ResourceKind, TransientApiError
from nim_operator.reconcile import (
    HANDOVER_MANAGER,
    Runtime,
    reconcile,
    reconcile_later,
    reconcile_soon,
)
from nim_operator.settings import Settings
from tests.support.kmock_cluster import EmulatedCluster
from tests.support.kmock_harness import connection_from_kubeconfig

NS = "models"
NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
SERVICES = ResourceKind("v1", "services")
HPAS = ResourceKind("autoscaling/v2", "horizontalpodautoscalers")
PDBS = ResourceKind("policy/v1", "poddisruptionbudgets")
SECRETS = ResourceKind("v1", "secrets")
LOGGER = logging.getLogger("test")

CPU_SPEC: dict[str, Any] = {
    "image": {"repository": "registry.k8s.io/pause", "tag": "3.10"},
    "gpu": {"count": 0},
}


class EventRecorder:
    def __init__(self) -> None:
        self.notes: list[EventNote] = []

    def __call__(self, body: Mapping[str, Any], notes: Sequence[EventNote]) -> None:
        self.notes.extend(notes)


@pytest_asyncio.fixture(loop_scope="session")
async def kube(cluster: EmulatedCluster, tmp_path: Path) -> AsyncIterator[KubeClient]:
    info = connection_from_kubeconfig(cluster.write_kubeconfig(tmp_path / "kubeconfig"))
    client = KubeClient(info, retries=2, backoff=0.01)
    yield client
    await client.close()


@pytest.fixture
def recorder() -> EventRecorder:
    return EventRecorder()


@pytest.fixture
def runtime(kube: KubeClient, recorder: EventRecorder) -> Runtime:
    settings = Settings(child_event_delay=0.05, capability_ttl=0)
    return Runtime(kube, settings, CapabilityCache(kube, ttl=0), post_events=recorder)


async def create(kube: KubeClient, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }
    return await kube.create(NIMSERVICES, NS, body)


async def update(kube: KubeClient, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    patched = await kube.merge_patch(NIMSERVICES, NS, name, {"spec": spec})
    assert patched is not None
    return patched


async def revisions(kube: KubeClient) -> dict[str, str]:
    kinds = (NIMSERVICES, DEPLOYMENTS, SERVICES, HPAS, PDBS, ResourceKind("v1", "serviceaccounts"))
    return {
        f"{kind.plural}/{obj['metadata']['name']}": obj["metadata"]["resourceVersion"]
        for kind in kinds
        for obj in await kube.list(kind, NS)
    }


def replicas_owners(deployment: dict[str, Any]) -> set[str]:
    return {
        entry["manager"]
        for entry in deployment["metadata"]["managedFields"]
        if "f:replicas" in entry.get("fieldsV1", {}).get("f:spec", {})
    }


async def test_a_second_run_changes_nothing(kube: KubeClient, runtime: Runtime) -> None:
    body = await create(kube, "llm", {**CPU_SPEC, "replicas": 2})
    first = await reconcile(runtime, body, logger=LOGGER)
    assert first is not None
    assert first.failure is None
    before = await revisions(kube)
    assert set(before) >= {"deployments/llm", "services/llm", "poddisruptionbudgets/llm"}

    body = await kube.get(NIMSERVICES, NS, "llm")
    assert body is not None
    second = await reconcile(runtime, body, logger=LOGGER)
    assert second is not None
    assert second.status == first.status
    assert await revisions(kube) == before


async def test_the_heap_is_trimmed_once_when_a_burst_of_runs_ends(
    kube: KubeClient, recorder: EventRecorder
) -> None:
    """Not after each run of the burst: only when no run holds or waits for a turn."""
    trims: list[int] = []

    def trim(pad: int) -> int:
        trims.append(runtime.busy)
        return 1

    settings = Settings(max_concurrent_reconciles=2, capability_ttl=0)
    runtime = Runtime(kube, settings, CapabilityCache(kube, ttl=0), post_events=recorder)
    runtime.heap = HeapTrimmer(0.0, trim=trim)  # no rate limit: every idle moment would trim
    bodies = [await create(kube, f"llm-{i}", CPU_SPEC) for i in range(5)]

    outcomes = await asyncio.gather(*(reconcile(runtime, b, logger=LOGGER) for b in bodies))

    assert all(o is not None and o.failure is None for o in outcomes)
    assert trims == [0]


async def test_replicas_are_handed_over_to_the_hpa_and_taken_back(
    kube: KubeClient, runtime: Runtime
) -> None:
    body = await create(kube, "llm", {**CPU_SPEC, "replicas": 3})
    await reconcile(runtime, body, logger=LOGGER)
    deployment = await kube.get(DEPLOYMENTS, NS, "llm")
    assert deployment is not None
    assert replicas_owners(deployment) == {"nimstack-operator"}

    autoscaled = {"enabled": True, "hpa": {"minReplicas": 2, "maxReplicas": 6}}
    body = await update(kube, "llm", {"replicas": None, "scale": autoscaled})
    await reconcile(runtime, body, logger=LOGGER)
    deployment = await kube.get(DEPLOYMENTS, NS, "llm")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 3  # not reset to 1
    assert replicas_owners(deployment) == {HANDOVER_MANAGER}
    assert await kube.get(HPAS, NS, "llm") is not None

    # The HPA writes the scale subresource; from then on the count is its alone.
    await kube.merge_patch(
        DEPLOYMENTS,
        NS,
        "llm",
        {"spec": {"replicas": 5}},
        subresource="scale",
        field_manager="kube-controller-manager",
    )
    await reconcile(runtime, body, logger=LOGGER)
    deployment = await kube.get(DEPLOYMENTS, NS, "llm")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 5
    assert replicas_owners(deployment) == {"kube-controller-manager"}

    body = await update(kube, "llm", {"replicas": 2, "scale": {"enabled": False, "hpa": None}})
    await reconcile(runtime, body, logger=LOGGER)
    deployment = await kube.get(DEPLOYMENTS, NS, "llm")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 2
    assert replicas_owners(deployment) == {"nimstack-operator"}
    assert await kube.get(HPAS, NS, "llm") is None


async def test_only_owned_children_are_deleted(kube: KubeClient, runtime: Runtime) -> None:
    body = await create(kube, "llm", {**CPU_SPEC, "replicas": 2})
    await reconcile(runtime, body, logger=LOGGER)
    assert await kube.get(PDBS, NS, "llm") is not None
    users_hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "llm", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "other"},
            "maxReplicas": 2,
        },
    }
    await kube.create(HPAS, NS, users_hpa)

    body = await update(kube, "llm", {"replicas": 1})
    await reconcile(runtime, body, logger=LOGGER)
    assert await kube.get(PDBS, NS, "llm") is None  # ours, feature off: deleted
    assert await kube.get(HPAS, NS, "llm") is not None  # someone else's: kept


async def test_a_missing_secret_fails_until_it_appears(
    kube: KubeClient, runtime: Runtime, recorder: EventRecorder
) -> None:
    body = await create(kube, "llm", {**CPU_SPEC, "authSecret": "ngc"})
    outcome = await reconcile(runtime, body, logger=LOGGER)
    assert outcome is not None
    assert outcome.failure is not None
    assert outcome.failure.reason == "SecretNotFound"
    assert not outcome.permanent
    assert await kube.get(DEPLOYMENTS, NS, "llm") is None
    assert ("Warning", "SecretNotFound") in {(n.type, n.reason) for n in recorder.notes}
    stored = await kube.get(NIMSERVICES, NS, "llm")
    assert stored is not None
    assert stored["status"]["state"] == "Failed"

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ngc"}}
    await kube.create(SECRETS, NS, {**secret, "stringData": {"NGC_API_KEY": "nvapi-x"}})
    outcome = await reconcile(runtime, stored, logger=LOGGER)
    assert outcome is not None
    assert outcome.failure is None
    assert await kube.get(DEPLOYMENTS, NS, "llm") is not None


async def test_an_invalid_spec_is_permanent_and_names_fields_not_values(
    kube: KubeClient, runtime: Runtime
) -> None:
    leaked = "nvapi-literal-key-in-the-spec"
    env = [{"name": "NGC_API_KEY", "value": leaked}]
    body = await create(kube, "llm", {**CPU_SPEC, "env": env})
    outcome = await reconcile(runtime, body, logger=LOGGER)
    assert outcome is not None
    assert outcome.permanent
    assert outcome.failure is not None
    assert outcome.failure.reason == "InvalidSpec"
    assert "spec.env[0]" in outcome.failure.message
    stored = await kube.get(NIMSERVICES, NS, "llm")
    assert stored is not None
    assert stored["status"]["conditions"]  # the status was written ...
    assert leaked not in str(stored["status"])  # ... without the value the user put in spec
    assert await kube.get(DEPLOYMENTS, NS, "llm") is None


async def test_an_object_being_deleted_is_left_alone(kube: KubeClient, runtime: Runtime) -> None:
    body = await create(kube, "llm", CPU_SPEC)
    body["metadata"]["deletionTimestamp"] = "2026-11-21T12:00:00Z"
    assert await reconcile(runtime, body, logger=LOGGER) is None
    assert await kube.get(DEPLOYMENTS, NS, "llm") is None


async def test_persistent_api_failures_surface_as_transient(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    body = await create(kube, "llm", CPU_SPEC)
    cluster.inspect(lambda e: e["patch", kmock.resource("apps", "v1", "deployments")] << 503)
    with pytest.raises(TransientApiError) as failed:
        await reconcile(runtime, body, logger=LOGGER)
    assert failed.value.status == 503


async def test_a_passing_api_failure_is_retried(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    body = await create(kube, "llm", CPU_SPEC)
    deployments = kmock.resource("apps", "v1", "deployments")
    cluster.inspect(lambda e: e["patch", deployments][:1] << 503)
    outcome = await reconcile(runtime, body, logger=LOGGER)
    assert outcome is not None
    assert outcome.failure is None
    assert await kube.get(DEPLOYMENTS, NS, "llm") is not None


async def test_a_child_the_api_server_rejects_fails_the_service(
    cluster: EmulatedCluster, kube: KubeClient, runtime: Runtime
) -> None:
    body = await create(kube, "llm", CPU_SPEC)
    invalid = kmock.Response(
        status=422,
        payload={"kind": "Status", "reason": "Invalid", "message": "spec.ports[0].port: Invalid"},
    )
    cluster.inspect(lambda e: e["patch", kmock.resource("", "v1", "services")] << invalid)
    outcome = await reconcile(runtime, body, logger=LOGGER)
    assert outcome is not None
    assert outcome.permanent
    assert outcome.failure is not None
    assert outcome.failure.reason == "ChildRejected"
    assert "spec.ports[0].port" in outcome.failure.message


async def test_a_burst_of_child_events_is_one_reconcile(kube: KubeClient, runtime: Runtime) -> None:
    uid = (await create(kube, "llm", CPU_SPEC))["metadata"]["uid"]
    outcomes = await asyncio.gather(
        *(reconcile_soon(runtime, NS, "llm", uid, logger=LOGGER) for _ in range(5))
    )
    assert sum(outcome is not None for outcome in outcomes) == 1
    assert await reconcile_soon(runtime, NS, "gone", "no-such-uid", logger=LOGGER) is None


async def test_a_child_event_while_a_run_waits_for_its_turn_starts_nothing(
    kube: KubeClient, runtime: Runtime
) -> None:
    """The waiting run reads the NIMService only once it holds the lock and a turn."""
    body = await create(kube, "llm", CPU_SPEC)
    uid = body["metadata"]["uid"]
    async with runtime.slot(uid).lock:  # another run of this NIMService is under way
        first = reconcile_later(runtime, NS, "llm", uid, logger=LOGGER)
        await asyncio.sleep(runtime.settings.child_event_delay * 3)
        assert first is not None
        assert not first.done()
        # The spec changes meanwhile; the event about it folds into the waiting run.
        await update(kube, "llm", {**CPU_SPEC, "replicas": 2})
        assert reconcile_later(runtime, NS, "llm", uid, logger=LOGGER) is None
    outcome = await first
    assert outcome is not None
    deployment = await kube.get(DEPLOYMENTS, NS, "llm")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 2  # what the NIMService said when the run began
    # Once a run has begun reading, the next event starts a run of its own.
    second = reconcile_later(runtime, NS, "llm", uid, logger=LOGGER)
    assert second is not None
    assert await second is not None


async def test_a_run_for_a_replaced_namesake_does_nothing(
    kube: KubeClient, runtime: Runtime
) -> None:
    """A child event of a deleted NIMService must not reconcile its namesake under the old uid."""
    old = await create(kube, "llm", CPU_SPEC)
    await kube.delete(NIMSERVICES, NS, "llm")
    await create(kube, "llm", CPU_SPEC)
    assert await reconcile_soon(runtime, NS, "llm", old["metadata"]["uid"], logger=LOGGER) is None
    assert await kube.get(DEPLOYMENTS, NS, "llm") is None


async def test_a_background_run_logs_under_its_nimservice(
    kube: KubeClient, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller's logger names the child whose event queued the run; the run's lines do not."""
    uid = (await create(kube, "llm", CPU_SPEC))["metadata"]["uid"]
    runtime.object_logger = lambda body: logging.getLogger(f"test.{body['metadata']['name']}")
    with caplog.at_level(logging.INFO):
        assert await reconcile_soon(runtime, NS, "llm", uid, logger=LOGGER) is not None
    transitions = [r for r in caplog.records if r.getMessage().startswith(("Normal", "Warning"))]
    assert transitions
    assert {r.name for r in transitions} == {"test.llm"}
