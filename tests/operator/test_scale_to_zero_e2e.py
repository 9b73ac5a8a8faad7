"""End-to-end: scale to zero after idle, with the real operator process on kmock.

`FakeReplicaSet` (tests/support/fake_nim_pods.py) keeps the Deployment's pods, each serving
Prometheus text over HTTP with the load and the finished-request counter the test sets; the
operator scrapes them as it scrapes real pods. The test also plays nim-gateway where it matters
to the operator: it writes the `nimstack.dev/demanded-at` annotation a gateway holding requests
writes, and wakes the service through the /scale subresource the gateway uses.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nim_operator.autoscaling.idle import DEMAND_ANNOTATION
from nim_operator.kube import KubeClient
from tests.operator.test_autoscaling_e2e import (
    PORT_ENV,
    autoscaling,
    events,
    replicas,
    scaling,
    until_replicas,
)
from tests.operator.test_operator_e2e import DEPLOYMENTS, E2E, NIMSERVICES, condition, cpu_spec
from tests.support.fake_nim_pods import FakeReplicaSet
from tests.support.kmock_harness import ClusterDriver, OperatorProcess

IDLE = 3  # scaleToZeroAfter, seconds


@pytest.fixture
def e2e(
    api: KubeClient, namespace: str, driver: ClusterDriver, operator_process: OperatorProcess
) -> E2E:
    return E2E(api, namespace, driver, operator_process)


@pytest.fixture
async def pods(e2e: E2E) -> AsyncIterator[FakeReplicaSet]:
    """The pods of Deployment `llm`, with metrics endpoints; kmock only."""
    if not e2e.driver.emulated:
        pytest.skip("needs pods whose metrics endpoints the test serves (kmock)")
    async with FakeReplicaSet(e2e.api, e2e.namespace, "llm") as replica_set:
        yield replica_set


async def to_zero_events(e2e: E2E) -> list[dict[str, Any]]:
    return [e for e in await events(e2e, "ScaledDown") if "-> 0 replicas" in e["message"]]


async def demand(e2e: E2E) -> None:
    """What nim-gateway writes while it holds requests for the service."""
    stamp = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {"metadata": {"annotations": {DEMAND_ANNOTATION: stamp}}}
    await e2e.api.merge_patch(NIMSERVICES, e2e.namespace, "llm", patch)


async def keep_at(e2e: E2E, count: int, seconds: float, *, every: Any) -> None:
    """Call `every()` each half second for `seconds`, checking the count never moves."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await every()
        assert await replicas(e2e) == count
        await asyncio.sleep(0.5)


async def test_the_built_in_autoscaler_goes_to_zero_only_when_idle(
    e2e: E2E, pods: FakeReplicaSet
) -> None:
    spec = cpu_spec(
        env=PORT_ENV,
        autoscaling=autoscaling(minReplicas=0, maxReplicas=3, scaleToZeroAfter=IDLE),
    )
    await e2e.create("llm", spec)
    await e2e.status_where(
        "llm", lambda o: condition(o, "ScalingActive").get("status") == "True", "ScalingActive"
    )
    assert await replicas(e2e) == 1

    # Requests held by a gateway keep it up, though its pod is idle...
    async def renew_demand() -> None:
        await demand(e2e)

    await keep_at(e2e, 1, 2 * IDLE, every=renew_demand)

    # ...and so do requests that finish between two scrapes (the counter moves).
    async def serve_one() -> None:
        pods.load.finished += 1

    await keep_at(e2e, 1, 2 * IDLE, every=serve_one)

    # Nothing for scaleToZeroAfter: zero, recorded and announced.
    quiet = asyncio.get_running_loop().time()
    await until_replicas(e2e, 0, within=IDLE + 10)
    assert asyncio.get_running_loop().time() - quiet >= IDLE - 1
    nim = await e2e.status_where(
        "llm", lambda o: condition(o, "ScalingActive").get("reason") == "ScaledToZero", "at zero"
    )
    last = scaling(nim)["history"][-1]
    assert (last["from"], last["to"], last["reason"]) == (1, 0, "ScaleToZero")
    assert scaling(nim)["reason"] == "ScaledToZero"
    (event,) = await e2e.until(lambda: to_zero_events(e2e), "a ScaledDown Event")
    assert "1 -> 0 replicas: no request for" in event["message"]
    # At zero it stays there: the load alone never wakes it (there is no pod to measure).
    await e2e.stays(lambda: _at(e2e, 0), "zero replicas", seconds=2)

    # The gateway wakes it through the Deployment's /scale (the autoscaler owns that count);
    # the clock starts anew, so the fresh pod gets its full scaleToZeroAfter.
    await e2e.api.merge_patch(
        DEPLOYMENTS,
        e2e.namespace,
        "llm",
        {"spec": {"replicas": 1}},
        subresource="scale",
        field_manager="nim-gateway",
    )
    woken = asyncio.get_running_loop().time()
    await until_replicas(e2e, 1, within=5)
    await until_replicas(e2e, 0, within=IDLE + 10)
    assert asyncio.get_running_loop().time() - woken >= IDLE - 1


async def _at(e2e: E2E, count: int) -> bool:
    return await replicas(e2e) == count


async def test_a_fixed_count_goes_to_zero_in_its_own_spec(e2e: E2E, pods: FakeReplicaSet) -> None:
    await e2e.create("llm", cpu_spec(env=PORT_ENV, replicas=2, scaleToZeroAfter=IDLE))
    await until_replicas(e2e, 2, within=e2e.driver.timeout)
    pods.load.running = 1  # a request in flight
    await e2e.stays(lambda: _at(e2e, 2), "two replicas while a request runs", seconds=IDLE + 1)

    pods.load.running = 0
    await until_replicas(e2e, 0, within=IDLE + 10)
    nim = await e2e.get(NIMSERVICES, "llm")
    assert nim is not None
    # spec.replicas is the truth, as for kubectl scale: the operator wrote it, then reconciled.
    assert nim["spec"]["replicas"] == 0
    (event,) = await e2e.until(lambda: to_zero_events(e2e), "a ScaledDown Event")
    assert "2 -> 0 replicas: no request for" in event["message"]

    # The gateway's wake: the NIMService's own /scale, 0 -> 1.
    await e2e.api.merge_patch(
        NIMSERVICES,
        e2e.namespace,
        "llm",
        {"spec": {"replicas": 1}},
        subresource="scale",
        field_manager="nim-gateway",
    )
    await until_replicas(e2e, 1, within=e2e.driver.timeout)
    await e2e.stays(lambda: _at(e2e, 1), "the woken replica", seconds=IDLE - 1)
    await until_replicas(e2e, 0, within=IDLE + 10)
