"""The autoscaler's glue around the pure decision: pods sorted by capacity, its conditions, the
status.autoscaling block, and `Autoscaler.evaluate` called directly (no kopf) against the API
server emulator, with pods whose metrics endpoints are real HTTP servers on loopback addresses.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from nim_operator.autoscaling.algorithm import Decision, Policy
from nim_operator.autoscaling.scaler import (
    HISTORY_LENGTH,
    SCALER_MANAGER,
    Autoscaler,
    autoscaling_status,
    policy_for,
    scaler_conditions,
    take_census,
)
from nim_operator.conditions import ConditionReport, Problem
from nim_operator.events import EventNote
from nim_operator.kube import CapabilityCache, KubeClient, ResourceKind
from nim_operator.models import AutoscalingSpec, AutoscalingStatus
from nim_operator.reconcile import Runtime, reconcile
from nim_operator.settings import Settings
from tests.support.fake_nim_pods import FakeReplicaSet, free_port
from tests.support.kmock_cluster import EmulatedCluster
from tests.support.kmock_harness import connection_from_kubeconfig

NS = "models"
NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
LOGGER = logging.getLogger("test")
POLICY = Policy(min_replicas=1, max_replicas=5, metric="running", target=4.0)
NOW = "2026-01-01T00:00:00Z"


def pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


READY = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
UNREADY = {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}
NO_GPU = {
    "phase": "Pending",
    "conditions": [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        }
    ],
}


class TestCensus:
    def test_pods_sorted_by_what_they_mean_for_capacity(self) -> None:
        census = take_census(
            [
                pod("ready", **READY),
                pod("loading", **UNREADY),
                pod("creating"),
                pod("no-gpu", **NO_GPU),
                pod("done", phase="Succeeded"),
                pod("crashed", phase="Failed"),
                {"metadata": {"name": "leaving", "deletionTimestamp": NOW}, "status": READY},
            ]
        )
        assert [p["metadata"]["name"] for p in census.ready] == ["ready"]
        assert census.starting == 2
        assert [p.reason for p in census.unschedulable] == ["InsufficientGPU"]

    def test_policy_from_the_spec(self) -> None:
        spec = AutoscalingSpec.model_validate(
            {"maxReplicas": 3, "metric": "queue", "scaleDownStabilizationSeconds": 60}
        )
        assert policy_for(spec) == Policy(1, 3, "queue", 4.0, 0.1, 0.0, 60.0)


def decision(reason: str, desired: int = 2, raw: int | None = 2) -> Decision:
    return Decision(desired=desired, reason=reason, message="seen", value=1.5, raw=raw)


class TestConditions:
    def census(self, *pods: dict[str, Any]) -> Any:
        return take_census(pods)

    def test_metrics_available(self) -> None:
        active, limited = scaler_conditions(
            decision("WithinTolerance"), self.census(pod("a", **READY)), [], POLICY
        )
        assert (active.status, active.reason) == ("True", "MetricsAvailable")
        assert "running read from 1 ready pod(s): seen" in active.message
        assert limited == ConditionReport(
            "ScalingLimited", "False", "WithinBounds", "replicas within [1, 5]"
        )

    def test_unreadable_pods_are_named(self) -> None:
        failures = [f"p{i}: GET http://10.0.0.{i}:8000/v1/metrics: timed out" for i in range(5)]
        census = self.census(*(pod(f"p{i}", **READY) for i in range(6)))
        active, _ = scaler_conditions(decision("MetricsUnavailable"), census, failures, POLICY)
        assert (active.status, active.reason) == ("False", "MetricsUnavailable")
        assert "no usable metrics from 5 of 6 ready pod(s) (p0: GET" in active.message
        assert "p2: GET" in active.message
        assert "p3" not in active.message  # three are enough to say what is wrong
        assert "not scaled down until every ready pod answers" in active.message

    def test_no_ready_pod(self) -> None:
        active, _ = scaler_conditions(decision("NoReadyPods", raw=None), self.census(), [], POLICY)
        assert (active.status, active.reason) == ("False", "NoReadyPods")

    def test_waiting_for_capacity(self) -> None:
        census = self.census(pod("a", **READY), pod("b", **NO_GPU))
        _, limited = scaler_conditions(decision("WaitingForCapacity"), census, [], POLICY)
        assert (limited.status, limited.reason) == ("True", "WaitingForCapacity")
        assert "1 pod(s) wait for a node with room" in limited.message
        assert "Insufficient nvidia.com/gpu" in limited.message

    def test_at_max(self) -> None:
        at_max = decision("AtMaxReplicas", desired=5, raw=9)
        _, limited = scaler_conditions(at_max, self.census(pod("a", **READY)), [], POLICY)
        assert (limited.status, limited.reason) == ("True", "AtMaxReplicas")
        assert "asks for 9 replicas; maxReplicas is 5" in limited.message


class TestStatusBlock:
    def test_a_change_is_recorded(self) -> None:
        block = autoscaling_status(
            None, policy=POLICY, decision=decision("ScaleUp", desired=3), current=1, now=NOW
        )
        assert block == {
            "metric": "running",
            "target": 4.0,
            "currentMetric": 1.5,
            "currentReplicas": 1,
            "desiredReplicas": 3,
            "lastScaleTime": NOW,
            "reason": "ScaleUp",
            "message": "seen",
            "history": [
                {
                    "time": NOW,
                    "from": 1,
                    "to": 3,
                    "metric": "running",
                    "value": 1.5,
                    "reason": "ScaleUp",
                }
            ],
        }
        AutoscalingStatus.model_validate(block)  # the shape the CRD declares

    def test_no_change_keeps_history_and_last_scale_time(self) -> None:
        first = autoscaling_status(
            None, policy=POLICY, decision=decision("ScaleUp", desired=3), current=1, now=NOW
        )
        later = autoscaling_status(
            first,
            policy=POLICY,
            decision=decision("DownStabilizing", desired=3),
            current=3,
            now="2026-01-01T00:05:00Z",
        )
        assert later["history"] == first["history"]
        assert later["lastScaleTime"] == NOW
        assert later["reason"] == "DownStabilizing"

    def test_history_is_bounded(self) -> None:
        block: Mapping[str, Any] | None = None
        for step in range(HISTORY_LENGTH + 5):
            block = autoscaling_status(
                block,
                policy=POLICY,
                decision=decision("ScaleUp", desired=step + 2),
                current=step + 1,
                now=f"2026-01-01T00:{step:02d}:00Z",
            )
        assert block is not None
        assert len(block["history"]) == HISTORY_LENGTH
        assert block["history"][-1]["to"] == HISTORY_LENGTH + 6  # the newest are kept

    def test_values_are_rounded_and_absent_ones_left_out(self) -> None:
        noisy = Decision(desired=1, reason="NoReadyPods", message="m", value=None, raw=None)
        block = autoscaling_status(None, policy=POLICY, decision=noisy, current=1, now=NOW)
        assert "currentMetric" not in block
        assert "history" not in block
        precise = Decision(desired=1, reason="WithinTolerance", message="m", value=3.14159, raw=1)
        block = autoscaling_status(None, policy=POLICY, decision=precise, current=1, now=NOW)
        assert block["currentMetric"] == 3.14


# --- one evaluation, against the emulator -------------------------------------------------------


class EventRecorder:
    def __init__(self) -> None:
        self.notes: list[EventNote] = []

    def __call__(self, body: Mapping[str, Any], notes: Sequence[EventNote]) -> None:
        self.notes.extend(notes)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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
    settings = Settings(child_event_delay=0.01, capability_ttl=0)
    return Runtime(kube, settings, CapabilityCache(kube, ttl=0), post_events=recorder)


@pytest_asyncio.fixture(loop_scope="session")
async def pods(kube: KubeClient) -> AsyncIterator[FakeReplicaSet]:
    replica_set = FakeReplicaSet(kube, NS, "llm")
    yield replica_set
    await replica_set.stop()


async def autoscaled(kube: KubeClient, runtime: Runtime, **autoscaling: Any) -> None:
    spec = {
        "image": {"repository": "registry.k8s.io/pause", "tag": "3.10"},
        "gpu": {"count": 0},
        # The fake pods' port (not 8000, which something else on the machine may hold).
        "env": [{"name": "NIM_SERVER_PORT", "value": str(free_port())}],
        "autoscaling": {"maxReplicas": 5, "target": 4, "interval": 7, **autoscaling},
    }
    body = {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": "llm", "namespace": NS},
        "spec": spec,
    }
    await reconcile(runtime, await kube.create(NIMSERVICES, NS, body), logger=LOGGER)


async def replicas(kube: KubeClient) -> int:
    deployment = await kube.get(DEPLOYMENTS, NS, "llm")
    assert deployment is not None
    return int(deployment["spec"]["replicas"])


async def test_an_evaluation_scales_records_and_reports(
    kube: KubeClient, runtime: Runtime, recorder: EventRecorder, pods: FakeReplicaSet
) -> None:
    await autoscaled(kube, runtime, scaleDownStabilizationSeconds=0)
    await pods.sync()
    pods.load.running = 12
    autoscaler = Autoscaler(runtime, scrape_timeout=1.0)
    try:
        assert await autoscaler.evaluate(NS, "llm", logger=LOGGER) == 7.0  # spec's interval
    finally:
        await autoscaler.close()

    # Through the scale subresource, under the autoscaler's own field manager, like an HPA.
    deployment = await kube.get(DEPLOYMENTS, NS, "llm")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 3
    owners = {
        (m["manager"], m.get("subresource"))
        for m in deployment["metadata"]["managedFields"]
        if "f:replicas" in m.get("fieldsV1", {}).get("f:spec", {})
    }
    assert owners == {(SCALER_MANAGER, "scale")}

    # status.autoscaling survives the CRD's structural pruning field for field.
    nim = await kube.get(NIMSERVICES, NS, "llm")
    assert nim is not None
    status = nim["status"]["autoscaling"]
    assert (status["currentMetric"], status["desiredReplicas"], status["reason"]) == (
        12,
        3,
        "ScaleUp",
    )
    (record,) = status["history"]
    assert (record["from"], record["to"], record["value"]) == (1, 3, 12)
    assert [(n.type, n.reason) for n in recorder.notes if n.reason == "ScaledUp"] == [
        ("Normal", "ScaledUp")
    ]
    # The conditions reach status.conditions through reconcile, the one writer of conditions.
    types = {c["type"]: c for c in nim["status"]["conditions"]}
    assert types["ScalingActive"]["reason"] == "MetricsAvailable"
    assert types["ScalingLimited"]["status"] == "False"


async def test_a_restarted_operator_scales_down_only_after_one_down_window(
    kube: KubeClient, runtime: Runtime, pods: FakeReplicaSet
) -> None:
    await autoscaled(kube, runtime, minReplicas=3, scaleDownStabilizationSeconds=60)
    clock = Clock()
    first = Autoscaler(runtime, scrape_timeout=1.0, clock=clock)
    await first.evaluate(NS, "llm", logger=LOGGER)  # raises the count to minReplicas
    await first.close()
    assert await replicas(kube) == 3
    await pods.sync()
    await kube.merge_patch(NIMSERVICES, NS, "llm", {"spec": {"autoscaling": {"minReplicas": 1}}})

    # A new process remembers nothing: it starts from "3 replicas, now", so idle pods are not
    # dropped until a whole down window has passed.
    restarted = Autoscaler(runtime, scrape_timeout=1.0, clock=clock)
    try:
        await restarted.evaluate(NS, "llm", logger=LOGGER)
        assert await replicas(kube) == 3
        nim = await kube.get(NIMSERVICES, NS, "llm")
        assert nim is not None
        assert nim["status"]["autoscaling"]["reason"] == "DownStabilizing"
        clock.now += 61
        await restarted.evaluate(NS, "llm", logger=LOGGER)
        assert await replicas(kube) == 1
    finally:
        await restarted.close()


async def test_a_pod_without_the_metric_is_named_and_holds_scale_downs(
    kube: KubeClient, runtime: Runtime, pods: FakeReplicaSet
) -> None:
    await autoscaled(kube, runtime, minReplicas=2, metric="kvCache", target=0.5)
    autoscaler = Autoscaler(runtime, scrape_timeout=1.0)
    try:
        await autoscaler.evaluate(NS, "llm", logger=LOGGER)  # up to minReplicas
        await pods.sync()
        (silent,) = await pods.kill("no-kv")
        await kube.merge_patch(
            NIMSERVICES,
            NS,
            "llm",
            {"spec": {"autoscaling": {"minReplicas": 1, "scaleDownStabilizationSeconds": 0}}},
        )
        await autoscaler.evaluate(NS, "llm", logger=LOGGER)
    finally:
        await autoscaler.close()
    assert await replicas(kube) == 2  # the idle pod alone would have allowed 1
    nim = await kube.get(NIMSERVICES, NS, "llm")
    assert nim is not None
    active = {c["type"]: c for c in nim["status"]["conditions"]}["ScalingActive"]
    assert (active["status"], active["reason"]) == ("False", "MetricsUnavailable")
    assert f"{silent}: its metrics have no kvCache gauge" in active["message"]


async def test_nothing_to_evaluate(kube: KubeClient, runtime: Runtime) -> None:
    autoscaler = Autoscaler(runtime, scrape_timeout=1.0)
    try:
        assert await autoscaler.evaluate(NS, "absent", logger=LOGGER) is None
        body = {
            "apiVersion": "nimstack.dev/v1alpha1",
            "kind": "NIMService",
            "metadata": {"name": "fixed", "namespace": NS},
            "spec": {"image": {"repository": "pause", "tag": "1"}, "replicas": 2},
        }
        await kube.create(NIMSERVICES, NS, body)
        assert await autoscaler.evaluate(NS, "fixed", logger=LOGGER) is None
    finally:
        await autoscaler.close()


def test_problem_type_is_shared() -> None:
    """The census reuses the status code's scheduling diagnosis (one wording for both)."""
    (problem,) = take_census([pod("x", **NO_GPU)]).unschedulable
    assert isinstance(problem, Problem)
    assert problem.message.startswith("pod x cannot be scheduled: 0/3 nodes are available")
