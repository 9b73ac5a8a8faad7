"""Scale from zero: the real `nim-gateway` process holds requests for a NIMService at zero
replicas, wakes it through the right /scale subresource, and answers once a replica is ready.

On the strict API-server emulator (tests/support/kmock_cluster). Kubernetes has no controllers
here, so the test plays them: after the gateway's scale write it publishes the ready
EndpointSlice the Deployment and EndpointSlice controllers would, pointing at a StubReplica.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import yaml

from nim_gateway.discovery import wake_target
from nim_gateway.wake import DEMAND_ANNOTATION
from tests.gateway.conftest import TOKEN, GatewayProcess, StubReplica, running_gateway
from tests.gateway.test_discovery_kubernetes import endpoint_slice, make_namespace
from tests.support.kmock_cluster import EmulatedCluster, project_crds
from tests.support.kmock_rbac import Permission, RbacAuthorizer, bound_permissions

NIMSERVICES = "/apis/nimstack.dev/v1alpha1/namespaces/{ns}/nimservices"
DEPLOYMENTS = "/apis/apps/v1/namespaces/{ns}/deployments"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
COMPONENT_RBAC = Path(__file__).parents[2] / "manifests/gateway/scale-from-zero/rbac.yaml"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def nimservice(name: str, served: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": name},
        "spec": {
            "image": {"repository": "nimstack/nim-server", "tag": "0.1.0-cpu"},
            "model": {"servedName": served},
            **spec,
        },
    }


def deployment(name: str, replicas: int) -> dict[str, Any]:
    """The Deployment the operator would have rendered, as far as /scale is concerned."""
    labels = {"app.kubernetes.io/instance": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "nim", "image": "nimstack/nim-server:0.1.0"}]},
            },
        },
    }


async def replicas(kube: httpx.AsyncClient, path: str) -> int:
    response = await kube.get(path)
    response.raise_for_status()
    return int(response.json()["spec"].get("replicas", -1))


async def until(predicate: Any, what: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, f"{what} never happened"
        await asyncio.sleep(0.05)


class HeldRequest(NamedTuple):
    gateway: GatewayProcess
    client: httpx.AsyncClient
    response: asyncio.Task[httpx.Response]
    sent: float  # time.monotonic()


@contextlib.asynccontextmanager
async def held_request(
    kube: httpx.AsyncClient,
    kubeconfig: Path,
    work: Path,
    ns: str,
    settings: Mapping[str, str],
    *,
    model: str,
    scale: str,
    client_timeout: float,
) -> AsyncIterator[HeldRequest]:
    """A gateway discovering `ns` with `settings` (NIM_GATEWAY_*), and a chat request for
    `model` it holds, sent once it is running and yielded once the gateway has set the /scale
    at `scale` to 1 (as it does before it waits for a replica)."""
    env = {"KUBECONFIG": str(kubeconfig), "NIM_GATEWAY_NAMESPACES": ns, **settings}
    async with (
        running_gateway(work, None, env=env) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=client_timeout) as client,
    ):
        sent = time.monotonic()
        response = asyncio.create_task(
            client.post("/v1/chat/completions", json={"model": model, **CHAT})
        )

        async def woken() -> bool:
            return await replicas(kube, scale) == 1

        await until(woken, f"{scale} set to 1 by the gateway")
        yield HeldRequest(gateway, client, response, sent)


class TestWakeTarget:
    """Which /scale the gateway writes, from the NIMService alone."""

    def body(self, **spec: Any) -> dict[str, Any]:
        obj = nimservice("llm", "m", **spec)
        obj["metadata"]["namespace"] = "team"
        return obj

    def test_built_in_autoscaler_at_min_zero_wakes_the_deployment(self) -> None:
        target = wake_target(self.body(autoscaling={"minReplicas": 0, "maxReplicas": 3}))
        assert target is not None
        assert target.scale_path == "/apis/apps/v1/namespaces/team/deployments/llm/scale"

    def test_a_fixed_count_with_an_idle_timeout_wakes_the_nimservice(self) -> None:
        target = wake_target(self.body(replicas=0, scaleToZeroAfter=600))
        assert target is not None
        assert target.scale_path == (
            "/apis/nimstack.dev/v1alpha1/namespaces/team/nimservices/llm/scale"
        )

    @pytest.mark.parametrize(
        "spec",
        [
            {},
            {"replicas": 0},  # zero on purpose: switched off, not asleep
            {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}},
            {"autoscaling": {"maxReplicas": 3}},
            {"scale": {"enabled": True, "hpa": {"maxReplicas": 3}}},
        ],
    )
    def test_other_services_are_never_woken(self, spec: dict[str, Any]) -> None:
        assert wake_target(self.body(**spec)) is None


async def test_a_held_request_is_answered_once_the_woken_replica_is_ready(
    kube: httpx.AsyncClient, kubeconfig: Path, stubs: list[StubReplica], tmp_path: Path
) -> None:
    """autoscaling.minReplicas 0 at zero: the gateway sets the Deployment's /scale to 1 and
    renews its demand on the NIMService while the request waits; a ready slice releases it."""
    ns = await make_namespace(kube, "wake-autoscaled")
    stub = StubReplica(models=[{"id": "cold", "object": "model"}])
    await stub.start()
    stubs.append(stub)
    service = nimservice("cold", "cold", autoscaling={"minReplicas": 0, "maxReplicas": 2})
    (await kube.post(NIMSERVICES.format(ns=ns), json=service)).raise_for_status()
    (await kube.post(DEPLOYMENTS.format(ns=ns), json=deployment("cold", 0))).raise_for_status()
    scale = f"{DEPLOYMENTS.format(ns=ns)}/cold/scale"
    settings = {"NIM_GATEWAY_WAKE_INTERVAL": "0.3", "NIM_GATEWAY_HOLD_TIMEOUT": "30"}
    async with held_request(
        kube, kubeconfig, tmp_path, ns, settings, model="cold", scale=scale, client_timeout=60
    ) as (gateway, client, held, started):
        live = (await kube.get(f"{NIMSERVICES.format(ns=ns)}/cold")).json()
        stamp = live["metadata"]["annotations"][DEMAND_ANNOTATION]
        assert stamp.endswith("Z")
        # The autoscaler owns the NIMService's count: the gateway left spec.replicas alone.
        assert "replicas" not in live["spec"]
        managers = {
            (entry["manager"], entry.get("subresource"))
            for entry in (await kube.get(f"{DEPLOYMENTS.format(ns=ns)}/cold")).json()["metadata"][
                "managedFields"
            ]
        }
        assert ("nim-gateway", "scale") in managers

        # Still waiting: no replica is ready yet, and the backend table says so.
        await asyncio.sleep(1.0)
        assert not held.done()
        async with httpx.AsyncClient(base_url=gateway.base_url) as admin:
            table = (await admin.get("/v1/gateway/backends")).json()
        assert table["held"] == {"cold": 1}
        # The demand is renewed while the request waits.
        await until(
            lambda: _annotation_changed(kube, f"{NIMSERVICES.format(ns=ns)}/cold", stamp),
            "the demand annotation renewed",
            within=5,
        )

        # The Deployment and EndpointSlice controllers' part: the pod is up and ready.
        ready = endpoint_slice("cold", "a", stub.port, [("127.0.0.1", True)])
        (await kube.post(SLICES.format(ns=ns), json=ready)).raise_for_status()
        response = await asyncio.wait_for(held, 20)
        assert response.status_code == 200, response.text
        assert response.json()["served_by"] == stub.port
        assert stub.hits == 1
        assert time.monotonic() - started < 25

        # Running now: the next request goes straight through, and the count is not touched.
        response = await client.post("/v1/chat/completions", json={"model": "cold", **CHAT})
        assert response.status_code == 200
        assert await replicas(kube, scale) == 1


async def _annotation_changed(kube: httpx.AsyncClient, path: str, before: str) -> bool:
    live = (await kube.get(path)).json()
    return bool(live["metadata"]["annotations"][DEMAND_ANNOTATION] != before)


async def test_the_hold_is_bounded_in_time_and_in_number(
    kube: httpx.AsyncClient, kubeconfig: Path, tmp_path: Path
) -> None:
    """A fixed count with scaleToZeroAfter, at zero: woken through the NIMService's own /scale.
    With no replica coming, the held request gets 503 model_starting at the timeout; past the
    per-model limit a request gets 429 at once. A NIMService at zero without an idle timeout is
    switched off, not asleep: 503 no_ready_replica at once, and it is not woken."""
    ns = await make_namespace(kube, "wake-fixed")
    asleep = nimservice("asleep", "asleep", replicas=0, scaleToZeroAfter=600)
    off = nimservice("off", "off", replicas=0)
    for body in (asleep, off):
        (await kube.post(NIMSERVICES.format(ns=ns), json=body)).raise_for_status()
    settings = {
        "NIM_GATEWAY_HOLD_TIMEOUT": "3",
        "NIM_GATEWAY_HOLD_MAX_PER_MODEL": "1",
        "NIM_GATEWAY_RETRY_AFTER": "7",
    }
    scale = f"{NIMSERVICES.format(ns=ns)}/asleep/scale"
    async with held_request(
        kube, kubeconfig, tmp_path, ns, settings, model="asleep", scale=scale, client_timeout=30
    ) as (_, client, held, started):
        second = time.monotonic()
        response = await client.post("/v1/chat/completions", json={"model": "asleep", **CHAT})
        assert time.monotonic() - second < 1.0
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        assert response.json()["error"]["code"] == "model_starting_queue_full"
        assert "starting" in response.json()["error"]["message"]

        response = await client.post("/v1/chat/completions", json={"model": "off", **CHAT})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "no_ready_replica"
        assert await replicas(kube, f"{NIMSERVICES.format(ns=ns)}/off/scale") == 0

        response = await asyncio.wait_for(held, 15)
        waited = time.monotonic() - started
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"
        error = response.json()["error"]
        assert error["code"] == "model_starting"
        assert "`asleep` is starting" in error["message"]
        assert 2.5 <= waited < 10

        # The place in the wait is free again: the next request is held, not refused.
        again = asyncio.create_task(
            client.post("/v1/chat/completions", json={"model": "asleep", **CHAT})
        )
        await asyncio.sleep(0.5)
        assert not again.done()
        assert (await asyncio.wait_for(again, 15)).status_code == 503


def scale_from_zero_grants() -> set[Permission]:
    documents = list(yaml.safe_load_all(COMPONENT_RBAC.read_text()))
    return bound_permissions(documents, namespace="nimstack-system", service_account="nim-gateway")


async def test_the_components_rbac_is_what_waking_uses(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The gateway as the ServiceAccount that manifests/gateway/scale-from-zero binds, on a
    cluster that authorizes it (403 for anything not granted): waking both kinds of service is
    refused nothing, and uses every grant of the component. Discovery's own reads (the gateway
    component's role) are granted here as well."""
    reads = {
        Permission("nimstack.dev", "nimservices", "list"),
        Permission("nimstack.dev", "nimservices", "watch"),
        Permission("discovery.k8s.io", "endpointslices", "list"),
        Permission("discovery.k8s.io", "endpointslices", "watch"),
    }
    grants = scale_from_zero_grants()
    authorizer = RbacAuthorizer(grants | reads, token="gateway-sa", user="nim-gateway")
    with EmulatedCluster(project_crds(), authorizer=authorizer) as cluster:
        config = cluster.write_kubeconfig(
            tmp_path_factory.mktemp("sa") / "kubeconfig", token="gateway-sa"
        )
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=cluster.url, headers=headers) as kube:
            ns = await make_namespace(kube, "wake-rbac")
            autoscaled = nimservice("a", "a", autoscaling={"minReplicas": 0, "maxReplicas": 2})
            fixed = nimservice("f", "f", replicas=0, scaleToZeroAfter=60)
            for body in (autoscaled, fixed):
                (await kube.post(NIMSERVICES.format(ns=ns), json=body)).raise_for_status()
            created = await kube.post(DEPLOYMENTS.format(ns=ns), json=deployment("a", 0))
            created.raise_for_status()
            env = {
                "KUBECONFIG": str(config),
                "NIM_GATEWAY_NAMESPACES": ns,
                "NIM_GATEWAY_HOLD_TIMEOUT": "2",
            }
            async with (
                running_gateway(tmp_path, None, env=env) as gateway,
                httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client,
            ):
                answers = await asyncio.gather(
                    *(
                        client.post("/v1/chat/completions", json={"model": model, **CHAT})
                        for model in ("a", "f")
                    )
                )
                assert [a.json()["error"]["code"] for a in answers] == ["model_starting"] * 2
            assert await replicas(kube, f"{DEPLOYMENTS.format(ns=ns)}/a/scale") == 1
            assert await replicas(kube, f"{NIMSERVICES.format(ns=ns)}/f/scale") == 1
    assert authorizer.denied == [], gateway.log()[-3000:]
    assert grants - authorizer.used == set()


async def test_a_refused_request_still_wakes_the_service(
    kube: httpx.AsyncClient, kubeconfig: Path, tmp_path: Path
) -> None:
    """With no room to hold (limits at 0) a request gets 429 at once, and is demand all the
    same: the service is woken for the client's retry."""
    ns = await make_namespace(kube, "wake-no-hold")
    body = nimservice("asleep", "asleep", replicas=0, scaleToZeroAfter=600)
    (await kube.post(NIMSERVICES.format(ns=ns), json=body)).raise_for_status()
    env = {
        "KUBECONFIG": str(kubeconfig),
        "NIM_GATEWAY_NAMESPACES": ns,
        "NIM_GATEWAY_HOLD_MAX_REQUESTS": "0",
    }
    async with (
        running_gateway(tmp_path, None, env=env) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client,
    ):
        response = await client.post("/v1/chat/completions", json={"model": "asleep", **CHAT})
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "model_starting_queue_full"

        async def woken() -> bool:
            return await replicas(kube, f"{NIMSERVICES.format(ns=ns)}/asleep/scale") == 1

        await until(woken, "the NIMService woken by a refused request")
        live = (await kube.get(f"{NIMSERVICES.format(ns=ns)}/asleep")).json()
        assert DEMAND_ANNOTATION in live["metadata"]["annotations"]
