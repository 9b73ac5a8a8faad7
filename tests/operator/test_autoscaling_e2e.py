"""End-to-end: the three ways to scale a NIMService, with the real operator process.

* `kubectl scale` / an HPA or KEDA ScaledObject targeting the NIMService: the scale subresource
  writes spec.replicas and the Deployment follows; status.selector is what HPAs select pods by.
* The built-in autoscaler (spec.autoscaling): on kmock, `FakeReplicaSet` keeps the Deployment's
  pods, each Ready on a loopback address of its own where a real HTTP server serves Prometheus
  text with the load the test sets; the operator scrapes them over HTTP exactly as it scrapes
  real pods. Only scheduling and the kubelet are emulated (kmock has neither, and there are no
  GPUs here).
* On a real cluster (`-m k8s`, KUBECONFIG set) the scenarios that need no load run for real:
  the scale subresource, CEL refusing `kubectl scale` while the autoscaler owns the count, pods
  whose metrics the operator cannot reach (it runs outside the cluster), and pods Pending for
  `nvidia.com/gpu` on a GPU-less cluster. The ones that need a controllable load are kmock-only.

Short windows and a 1 s interval keep each scenario to seconds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nim_operator.kube import ApiError
from tests.operator.test_operator_e2e import (
    DEPLOYMENTS,
    E2E,
    NIMSERVICES,
    SELECTOR,
    condition,
    cpu_spec,
)
from tests.support.fake_nim_pods import FakeReplicaSet, free_port
from tests.support.kmock_harness import PodState

DOWN_WINDOW = 5
# The fake pods serve their metrics on the pod's `api` port, set as a user would (see
# tests/support/fake_nim_pods.py for why not the default 8000).
PORT_ENV = [{"name": "NIM_SERVER_PORT", "value": str(free_port())}]


def autoscaled_spec(extra: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    return cpu_spec(env=PORT_ENV, autoscaling=autoscaling(**overrides), **(extra or {}))


def autoscaling(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "minReplicas": 1,
        "maxReplicas": 5,
        "metric": "running",
        "target": 4,
        "interval": 1,
        "scaleDownStabilizationSeconds": DOWN_WINDOW,
    }
    spec.update(overrides)
    return spec


async def replicas(e2e: E2E, name: str = "llm") -> int | None:
    deployment = await e2e.get(DEPLOYMENTS, name)
    return None if deployment is None else int(deployment["spec"].get("replicas", 1))


async def until_replicas(e2e: E2E, count: int, *, within: float = 15.0) -> None:
    async def reached() -> bool:
        return await replicas(e2e) == count

    await e2e.until(reached, f"Deployment at {count} replicas", within=within)


def scaling(obj: dict[str, Any]) -> dict[str, Any]:
    return dict((obj.get("status") or {}).get("autoscaling") or {})


async def events(e2e: E2E, reason: str) -> list[dict[str, Any]]:
    return [e for e in await e2e.events_for("llm") if e.get("reason") == reason]


# --- kubectl scale, and an HPA or KEDA aimed at the NIMService ---------------------------------


async def test_the_scale_subresource_moves_the_deployment(e2e: E2E) -> None:
    await e2e.create("llm", cpu_spec(replicas=1))
    await until_replicas(e2e, 1, within=e2e.driver.timeout)

    # `kubectl scale nimservice/llm --replicas=3` is this PATCH of the scale subresource.
    scale = await e2e.api.merge_patch(
        NIMSERVICES,
        e2e.namespace,
        "llm",
        {"spec": {"replicas": 3}},
        subresource="scale",
        field_manager="kubectl-scale",
    )
    assert scale is not None
    assert (scale["kind"], scale["spec"]["replicas"]) == ("Scale", 3)
    await until_replicas(e2e, 3, within=e2e.driver.timeout)
    await e2e.driver.pods_become(e2e.namespace, "llm", PodState.READY)

    # What an HPA or KEDA reads: the count, and the selector of the pods whose metrics count.
    async def scale_reports_pods() -> dict[str, Any] | None:
        scale = await e2e.api.get(NIMSERVICES, e2e.namespace, "llm", subresource="scale")
        return scale if scale and scale["status"].get("replicas") == 3 else None

    scale = await e2e.until(scale_reports_pods, "scale status.replicas 3")
    assert scale["status"]["selector"] == SELECTOR.format(name="llm")
    nim = await e2e.get(NIMSERVICES, "llm")
    assert nim is not None
    assert nim["spec"]["replicas"] == 3

    # An HPA whose scaleTargetRef is the NIMService writes the same subresource, as the
    # controller manager; the operator follows and never writes spec.replicas back.
    await e2e.api.merge_patch(
        NIMSERVICES,
        e2e.namespace,
        "llm",
        {"spec": {"replicas": 2}},
        subresource="scale",
        field_manager="kube-controller-manager",
    )
    await until_replicas(e2e, 2, within=e2e.driver.timeout)

    async def still_two() -> bool:
        nim = await e2e.get(NIMSERVICES, "llm")
        return await replicas(e2e) == 2 and nim is not None and nim["spec"]["replicas"] == 2

    await e2e.stays(still_two, "the HPA's 2 replicas", seconds=4)


async def test_kubectl_scale_works_without_replicas_but_reading_scale_needs_them(
    e2e: E2E,
) -> None:
    """Why the KEDA and HPA samples set spec.replicas on the NIMService they target."""
    await e2e.create("llm", cpu_spec())  # replicas unset: one pod
    await until_replicas(e2e, 1, within=e2e.driver.timeout)
    # What an HPA or KEDA does first: read the scale. The API server cannot, yet.
    with pytest.raises(ApiError) as unreadable:
        await e2e.api.get(NIMSERVICES, e2e.namespace, "llm", subresource="scale")
    assert unreadable.value.status == 500
    assert 'the spec replicas field ".spec.replicas" does not exist' in unreadable.value.message
    # `kubectl scale` patches instead, which sets the field.
    await e2e.api.merge_patch(
        NIMSERVICES,
        e2e.namespace,
        "llm",
        {"spec": {"replicas": 2}},
        subresource="scale",
        field_manager="kubectl-scale",
    )
    await until_replicas(e2e, 2, within=e2e.driver.timeout)
    scale = await e2e.api.get(NIMSERVICES, e2e.namespace, "llm", subresource="scale")
    assert scale is not None
    assert scale["spec"]["replicas"] == 2


async def test_kubectl_scale_is_refused_while_the_built_in_autoscaler_owns_replicas(
    e2e: E2E,
) -> None:
    await e2e.create("llm", autoscaled_spec())
    await e2e.child(DEPLOYMENTS, "llm")
    exclusive = "spec.replicas and spec.autoscaling are mutually exclusive"
    if not e2e.driver.emulated:
        # The API server runs the CRD's CEL rules on the scale write too.
        with pytest.raises(ApiError) as refused:
            await e2e.api.merge_patch(
                NIMSERVICES,
                e2e.namespace,
                "llm",
                {"spec": {"replicas": 3}},
                subresource="scale",
                field_manager="kubectl-scale",
            )
        assert refused.value.status == 422
        assert exclusive in refused.value.message
        return
    # kmock runs no CEL: the write lands, and the operator's own validation says the same.
    await e2e.api.merge_patch(
        NIMSERVICES, e2e.namespace, "llm", {"spec": {"replicas": 3}}, subresource="scale"
    )
    failed = await e2e.status_where(
        "llm", lambda o: condition(o, "Failed").get("reason") == "InvalidSpec", "InvalidSpec"
    )
    assert exclusive in condition(failed, "Failed")["message"]


# --- the built-in autoscaler --------------------------------------------------------------------


async def test_load_scales_up_at_once_and_down_only_after_the_window(
    e2e: E2E, pods: FakeReplicaSet
) -> None:
    await e2e.create("llm", autoscaled_spec())
    active = await e2e.status_where(
        "llm", lambda o: condition(o, "ScalingActive").get("status") == "True", "ScalingActive"
    )
    assert condition(active, "ScalingActive")["reason"] == "MetricsAvailable"
    assert condition(active, "ScalingLimited")["status"] == "False"
    assert await replicas(e2e) == 1

    # 14 requests in flight, 4 wanted per pod: 4 pods, at the next evaluation.
    pods.load.running = 14
    await until_replicas(e2e, 4, within=10)  # an evaluation or two, on a busy machine
    nim = await e2e.status_where(
        "llm", lambda o: len(scaling(o).get("history") or []) == 1, "one scaling decision"
    )
    status = scaling(nim)
    (record,) = status["history"]
    assert {k: record[k] for k in ("from", "to", "metric", "reason", "value")} == {
        "from": 1,
        "to": 4,
        "metric": "running",
        "reason": "ScaleUp",
        "value": 14,
    }
    assert status["lastScaleTime"] == record["time"]
    assert (status["metric"], status["target"]) == ("running", 4)
    up = await e2e.until(lambda: events(e2e, "ScaledUp"), "a ScaledUp Event")
    assert "1 -> 4 replicas" in up[0]["message"]
    assert up[0]["type"] == "Normal"

    # The load goes: nothing moves until the down window has passed, then it falls to 1.
    pods.load.running = 0
    dropped = asyncio.get_running_loop().time()

    async def four() -> bool:
        return await replicas(e2e) == 4

    await e2e.stays(four, "4 replicas within the down window", seconds=DOWN_WINDOW - 2)
    nim = await e2e.status_where(
        "llm", lambda o: scaling(o).get("reason") == "DownStabilizing", "DownStabilizing"
    )
    assert scaling(nim)["desiredReplicas"] == 4
    await until_replicas(e2e, 1, within=DOWN_WINDOW + 15)
    assert asyncio.get_running_loop().time() - dropped >= DOWN_WINDOW - 1
    nim = await e2e.status_where(
        "llm", lambda o: len(scaling(o).get("history") or []) == 2, "two scaling decisions"
    )
    last = scaling(nim)["history"][-1]
    assert (last["from"], last["to"], last["reason"]) == (4, 1, "ScaleDown")
    await e2e.until(lambda: events(e2e, "ScaledDown"), "a ScaledDown Event")


async def test_unreadable_metrics_never_scale_down_and_the_condition_says_why(
    e2e: E2E, pods: FakeReplicaSet
) -> None:
    await e2e.create("llm", autoscaled_spec(minReplicas=3))
    await until_replicas(e2e, 3)
    await e2e.status_where(
        "llm", lambda o: condition(o, "ScalingActive").get("status") == "True", "ScalingActive"
    )
    (dead,) = await pods.kill("dead")
    (garbled,) = await pods.kill("garbage")
    # Idle pods and minReplicas lowered: without two pods' metrics, nothing goes.
    await e2e.patch_spec("llm", {"autoscaling": {"minReplicas": 1}})
    nim = await e2e.status_where(
        "llm",
        lambda o: condition(o, "ScalingActive").get("reason") == "MetricsUnavailable",
        "ScalingActive=False MetricsUnavailable",
    )
    message = condition(nim, "ScalingActive")["message"]
    assert condition(nim, "ScalingActive")["status"] == "False"
    assert f"{dead}: GET http://" in message  # connection refused
    assert f"{garbled}: " in message  # 200, but not Prometheus text
    assert "2 of 3 ready pod(s)" in message
    assert "not scaled down" in message

    async def three() -> bool:
        return await replicas(e2e) == 3

    await e2e.stays(three, "3 replicas while a pod is unreadable", seconds=DOWN_WINDOW + 1)
    warning = await e2e.until(lambda: events(e2e, "MetricsUnavailable"), "a Warning Event")
    assert warning[0]["type"] == "Warning"

    # Its endpoint is back: the idle service shrinks after the window.
    await pods.revive()
    await until_replicas(e2e, 1, within=DOWN_WINDOW + 15)
    await e2e.status_where(
        "llm", lambda o: condition(o, "ScalingActive").get("status") == "True", "active again"
    )


async def test_metrics_the_operator_cannot_reach_hold_the_replica_count(e2e: E2E) -> None:
    """Ready pods whose metrics endpoint does not answer at all.

    On kmock the pods' IPs (10.244.0.x) route nowhere from here, so each scrape fails or times
    out; on a real cluster the operator runs outside it and cannot reach pod IPs either.
    """
    await e2e.create("llm", autoscaled_spec(minReplicas=3))
    await until_replicas(e2e, 3, within=e2e.driver.timeout)
    await e2e.driver.pods_become(e2e.namespace, "llm", PodState.READY)
    await e2e.patch_spec("llm", {"autoscaling": {"minReplicas": 1}})
    nim = await e2e.status_where(
        "llm",
        lambda o: condition(o, "ScalingActive").get("reason") == "MetricsUnavailable",
        "ScalingActive=False MetricsUnavailable",
    )
    assert "of 3 ready pod(s)" in condition(nim, "ScalingActive")["message"]

    async def three() -> bool:
        return await replicas(e2e) == 3

    await e2e.stays(three, "3 replicas without metrics", seconds=DOWN_WINDOW + 1)
    status = scaling(await e2e.get(NIMSERVICES, "llm") or {})
    assert status["reason"] == "MetricsUnavailable"
    assert "replicas held at 3" in status["message"]


async def test_pods_pending_for_gpus_show_as_waiting_for_capacity(e2e: E2E) -> None:
    """gpu.count 1 where no node has a free GPU (kmock: emulated; kind: for real)."""
    spec = autoscaled_spec({"gpu": {"count": 1}}, minReplicas=2)
    await e2e.create("llm", spec)
    await until_replicas(e2e, 2, within=e2e.driver.timeout)
    await e2e.driver.pods_become(e2e.namespace, "llm", PodState.UNSCHEDULABLE_GPU)
    nim = await e2e.status_where(
        "llm",
        lambda o: condition(o, "ScalingLimited").get("reason") == "WaitingForCapacity",
        "ScalingLimited=True WaitingForCapacity",
    )
    limited = condition(nim, "ScalingLimited")
    assert limited["status"] == "True"
    assert "Insufficient nvidia.com/gpu" in limited["message"]
    assert "no replica is added" in limited["message"]
    assert condition(nim, "ScalingActive")["reason"] == "NoReadyPods"
    assert nim["status"]["state"] == "Pending"  # waiting, not broken: a cluster autoscaler may act

    async def two() -> bool:
        return await replicas(e2e) == 2

    await e2e.stays(two, "minReplicas while pods wait for GPUs", seconds=3)


async def test_no_replicas_are_added_while_pods_wait_for_capacity(
    e2e: E2E, pods: FakeReplicaSet
) -> None:
    pods.schedulable = 2  # the GPU nodes fit two pods
    await e2e.create("llm", autoscaled_spec({"gpu": {"count": 1}}, maxReplicas=8))
    await until_replicas(e2e, 1)
    pods.load.running = 10  # needs 3 pods: the third cannot be scheduled
    await until_replicas(e2e, 3)
    nim = await e2e.status_where(
        "llm",
        lambda o: condition(o, "ScalingLimited").get("reason") == "WaitingForCapacity",
        "WaitingForCapacity",
    )
    assert condition(nim, "Degraded")["reason"] == "InsufficientGPU"

    # The load doubles, but another pending pod would add nothing: the count stays.
    pods.load.running = 24

    async def three() -> bool:
        return await replicas(e2e) == 3

    await e2e.stays(three, "3 replicas while one waits for a GPU", seconds=3)
    nim = await e2e.status_where(
        "llm", lambda o: scaling(o).get("reason") == "WaitingForCapacity", "held for capacity"
    )

    # A node with GPUs joins (say, from a cluster autoscaler): the pending pod runs, and the
    # load (24 / 4) asks for 6.
    pods.schedulable = None
    await until_replicas(e2e, 6)
    await e2e.status_where(
        "llm", lambda o: condition(o, "ScalingLimited").get("status") == "False", "not limited"
    )


async def test_switching_between_a_fixed_count_and_the_built_in_autoscaler(
    e2e: E2E, pods: FakeReplicaSet
) -> None:
    await e2e.create("llm", cpu_spec(replicas=3, env=PORT_ENV))
    await until_replicas(e2e, 3)

    # On: the count is handed over, not reset to 1, and then follows the (idle) load down
    # after the window.
    await e2e.patch_spec("llm", {"replicas": None, "autoscaling": autoscaling()})
    await e2e.status_where(
        "llm", lambda o: scaling(o).get("reason") == "DownStabilizing", "DownStabilizing"
    )
    assert await replicas(e2e) == 3
    await until_replicas(e2e, 1, within=DOWN_WINDOW + 15)

    # Off: the spec's count again; the autoscaler's status and conditions go, and it stops.
    await e2e.patch_spec("llm", {"autoscaling": None, "replicas": 2})
    await until_replicas(e2e, 2)
    nim = await e2e.status_where(
        "llm",
        lambda o: "autoscaling" not in o.get("status", {}) and not condition(o, "ScalingActive"),
        "status.autoscaling and ScalingActive removed",
    )
    assert {c["type"] for c in nim["status"]["conditions"]} == {
        "Ready",
        "Progressing",
        "Degraded",
        "Failed",
    }
    pods.load.running = 40  # would ask for 5, if anything were still scaling

    async def two() -> bool:
        return await replicas(e2e) == 2

    await e2e.stays(two, "the spec's 2 replicas", seconds=3)
