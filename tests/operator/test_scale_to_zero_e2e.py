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
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from nim_operator.autoscaling.idle import DEMAND_ANNOTATION
from nim_operator.kube import ResourceKind
from tests.operator.test_autoscaling_e2e import (
    PORT_ENV,
    autoscaling,
    events,
    replicas,
    scaling,
    until_replicas,
)
from tests.operator.test_operator_e2e import DEPLOYMENTS, E2E, NIMSERVICES, condition, cpu_spec
from tests.support.fake_nim_pods import FakeReplicaSet, free_port

IDLE = 3  # scaleToZeroAfter, seconds


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


# --- the whole loop: the real operator and the real nim-gateway ----------------------------------

ENDPOINT_SLICES = ResourceKind("discovery.k8s.io/v1", "endpointslices")


async def follow_ready_pods(e2e: E2E, pods: FakeReplicaSet, port: int) -> None:
    """The EndpointSlice controller's part: slice `llm-fake` lists the ready pods of `llm`."""
    slice_body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "llm-fake", "labels": {"kubernetes.io/service-name": "llm"}},
        "addressType": "IPv4",
        "ports": [{"name": "api", "port": port, "protocol": "TCP"}],
        "endpoints": [],
    }
    await e2e.api.create(ENDPOINT_SLICES, e2e.namespace, slice_body)
    published: list[str] | None = None
    while True:
        ips = sorted(server.ip for server in pods.servers.values())
        if ips != published:
            endpoints = [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips]
            patch = {"endpoints": endpoints}
            await e2e.api.merge_patch(ENDPOINT_SLICES, e2e.namespace, "llm-fake", patch)
            published = ips
        await asyncio.sleep(0.1)


def start_gateway(
    kubeconfig: Path, namespace: str, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NIM_GATEWAY_")},
        "KUBECONFIG": str(kubeconfig),
        "NIM_GATEWAY_NAMESPACES": namespace,
        "NIM_GATEWAY_SCRAPE_INTERVAL": "0.2",
        "NIM_GATEWAY_WAKE_INTERVAL": "0.5",
        "NIM_GATEWAY_HOLD_TIMEOUT": "30",
    }
    script = Path(sys.executable).with_name("nim-gateway")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "nim_gateway"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, port


async def test_a_request_wakes_a_service_at_zero_which_goes_back_when_idle(
    e2e: E2E, pods: FakeReplicaSet, kubeconfig: Path, tmp_path: Path
) -> None:
    """Operator and gateway together, nothing played but the controllers kmock lacks: the
    service idles to zero; a request through the gateway is held, wakes it, and is answered by
    the new pod; the operator leaves the woken pod alone while the request waits and for
    scaleToZeroAfter after it, then takes the service back to zero."""
    port = int(PORT_ENV[0]["value"])
    spec = cpu_spec(
        env=PORT_ENV,
        model={"servedName": "sleepy"},
        autoscaling=autoscaling(minReplicas=0, maxReplicas=2, scaleToZeroAfter=IDLE),
    )
    await e2e.create("llm", spec)
    slices = asyncio.create_task(follow_ready_pods(e2e, pods, port))
    process, gateway_port = start_gateway(kubeconfig, e2e.namespace, tmp_path / "gateway.log")
    try:
        await until_replicas(e2e, 1, within=e2e.driver.timeout)
        await until_replicas(e2e, 0, within=IDLE + 15)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gateway_port}", timeout=60
        ) as client:

            async def gateway_sees_no_replica() -> bool:
                try:
                    response = await client.get("/v1/gateway/backends")
                except httpx.TransportError:
                    return False
                services = response.json()["services"] if response.status_code == 200 else []
                return [s["endpoints"] for s in services] == [[]]

            await e2e.until(gateway_sees_no_replica, "the gateway at zero replicas", within=30)
            body = {"model": "sleepy", "messages": [{"role": "user", "content": "hi"}]}
            asked = asyncio.get_running_loop().time()
            response = await client.post("/v1/chat/completions", json=body)
            answered = asyncio.get_running_loop().time()
        assert response.status_code == 200, (response.text, (tmp_path / "gateway.log").read_text())
        (server,) = pods.servers.values()
        assert response.json()["served_by"] == server.ip
        assert answered - asked < 25
        nim = await e2e.get(NIMSERVICES, "llm")
        assert nim is not None
        assert DEMAND_ANNOTATION in nim["metadata"]["annotations"]

        await e2e.stays(lambda: _at(e2e, 1), "the woken pod", seconds=IDLE - 1)
        await until_replicas(e2e, 0, within=IDLE + 10)
        assert asyncio.get_running_loop().time() - answered >= IDLE - 1
    finally:
        slices.cancel()
        await asyncio.gather(slices, return_exceptions=True)
        process.terminate()
        await asyncio.to_thread(process.wait, 15)
