"""Backends from Kubernetes: NIMServices and their EndpointSlices on the API-server emulator.

The emulator (tests/support/kmock_cluster) is strict: a request kube-apiserver would refuse
(a malformed watch parameter, say) fails the module at teardown. Kubernetes has no controllers
here, so the tests write the EndpointSlices the EndpointSlice controller would.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from nim_gateway.backends import BackendTable
from nim_gateway.discovery import KubernetesDiscovery
from nim_gateway.kube import KubeApi, connection_from_environment
from tests.gateway.conftest import StubReplica, running_gateway

NIMSERVICES = "/apis/nimstack.dev/v1alpha1/namespaces/{ns}/nimservices"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def make_namespace(kube: httpx.AsyncClient, name: str) -> str:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    (await kube.post("/api/v1/namespaces", json=body)).raise_for_status()
    return name


def nimservice(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"image": {"repository": "nimstack/nim-server", "tag": "0.1.0-cpu"}},
    }


def endpoint_slice(
    service: str, suffix: str, port: int, endpoints: list[tuple[str, bool]]
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-{suffix}",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "api", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in endpoints
        ],
    }


async def eventually(condition: Callable[[], bool], what: str, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened"
        await asyncio.sleep(0.05)


async def test_the_table_follows_nimservices_slices_and_readiness(
    kube: httpx.AsyncClient, kubeconfig: Path
) -> None:
    ns = await make_namespace(kube, "gw-table")
    other = await make_namespace(kube, "gw-elsewhere")
    api = KubeApi(connection_from_environment({"KUBECONFIG": str(kubeconfig)}))
    table = BackendTable()
    discovery = KubernetesDiscovery(api, table, [ns])
    task = asyncio.create_task(discovery.run())

    def urls() -> dict[str, tuple[str, ...]]:
        return {name: spec.urls for name, spec in table.services().items()}

    try:
        await asyncio.wait_for(discovery.synced.wait(), 10)
        assert urls() == {}
        annotations = {"nimstack.dev/routing": "prefix-affinity"}
        created = await kube.post(NIMSERVICES.format(ns=ns), json=nimservice("llm", annotations))
        created.raise_for_status()
        await eventually(lambda: urls() == {f"{ns}/llm": ()}, "the NIMService listed")
        spec = table.services()[f"{ns}/llm"]
        assert spec.routing == "prefix-affinity"
        assert spec.declared_models == ("llm",)
        # No replica yet: the model is known, and not ready (503, not 404).
        assert table.lookup("llm").known
        assert table.lookup("llm").candidates == ()

        slice_path = SLICES.format(ns=ns)
        body = endpoint_slice("llm", "x1", 8000, [("10.1.0.1", True), ("10.1.0.2", False)])
        (await kube.post(slice_path, json=body)).raise_for_status()
        # Slices of other Services, and NIMServices of other namespaces, are not ours.
        unrelated = endpoint_slice("not-a-nimservice", "x", 8000, [("10.9.9.9", True)])
        (await kube.post(slice_path, json=unrelated)).raise_for_status()
        (await kube.post(NIMSERVICES.format(ns=other), json=nimservice("llm"))).raise_for_status()
        await eventually(
            lambda: urls() == {f"{ns}/llm": ("http://10.1.0.1:8000",)}, "the ready address"
        )

        # A second slice (large services have several) and a pod turning ready.
        second = endpoint_slice("llm", "x2", 8000, [("10.1.0.3", True)])
        (await kube.post(slice_path, json=second)).raise_for_status()
        patch = {
            "endpoints": [
                {"addresses": ["10.1.0.1"], "conditions": {"ready": True}},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": True}},
            ]
        }
        response = await kube.patch(
            f"{slice_path}/llm-x1",
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        response.raise_for_status()
        everything = ("http://10.1.0.1:8000", "http://10.1.0.2:8000", "http://10.1.0.3:8000")
        await eventually(lambda: urls() == {f"{ns}/llm": everything}, "three ready addresses")

        # A pod going unready, a slice deleted, then the NIMService itself.
        patch = {
            "endpoints": [
                {"addresses": ["10.1.0.1"], "conditions": {"ready": False}},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": True}},
            ]
        }
        response = await kube.patch(
            f"{slice_path}/llm-x1",
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        response.raise_for_status()
        await eventually(
            lambda: urls() == {f"{ns}/llm": everything[1:]}, "the unready address removed"
        )
        (await kube.delete(f"{slice_path}/llm-x2")).raise_for_status()
        await eventually(
            lambda: urls() == {f"{ns}/llm": ("http://10.1.0.2:8000",)}, "the slice removed"
        )
        (await kube.delete(f"{NIMSERVICES.format(ns=ns)}/llm")).raise_for_status()
        await eventually(lambda: urls() == {}, "the NIMService removed")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


async def test_the_gateway_process_serves_what_kubernetes_says(
    kube: httpx.AsyncClient, kubeconfig: Path, stubs: list[StubReplica], tmp_path: Path
) -> None:
    ns = await make_namespace(kube, "gw-process")
    stub = StubReplica(models=[{"id": "served", "object": "model"}])
    await stub.start()
    stubs.append(stub)
    env = {
        "KUBECONFIG": str(kubeconfig),
        "NIM_GATEWAY_NAMESPACES": ns,
        "NIM_GATEWAY_API_KEY_SECRET": f"{ns}/gateway-keys",
        "NIM_GATEWAY_SECRET_REFRESH_INTERVAL": "0.3",
    }
    keys = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "gateway-keys"},
        # `data`, not `stringData`: the emulator does not do the API server's conversion.
        "data": {"api-key": b64("cluster-key")},
    }
    (await kube.post(f"/api/v1/namespaces/{ns}/secrets", json=keys)).raise_for_status()
    service = nimservice("llm")
    service["spec"]["model"] = {"servedName": "served"}
    (await kube.post(NIMSERVICES.format(ns=ns), json=service)).raise_for_status()
    async with (
        running_gateway(
            tmp_path, None, env=env, api_key="cluster-key", key_in_env=False
        ) as gateway,
        httpx.AsyncClient(
            base_url=gateway.base_url, timeout=30, headers={"Authorization": "Bearer cluster-key"}
        ) as client,
    ):
        body = {"model": "served", "messages": [{"role": "user", "content": "hi"}]}
        # The only valid key is the Secret's.
        response = await client.post(
            "/v1/chat/completions", json=body, headers={"Authorization": "Bearer other"}
        )
        assert response.status_code == 401
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"

        # The stub listens on 127.0.0.1, the slice's "pod IP".
        ready = endpoint_slice("llm", "a", stub.port, [("127.0.0.1", True)])
        (await kube.post(SLICES.format(ns=ns), json=ready)).raise_for_status()

        async def routed() -> bool:
            return (await client.post("/v1/chat/completions", json=body)).status_code == 200

        await gateway.wait_for(routed, "requests reaching the replica")
        assert stub.hits >= 1
        models = (await client.get("/v1/models")).json()["data"]
        assert [m["id"] for m in models] == ["served"]

        # A per-model key added to the Secret is valid after the next read of it.
        added = {"data": {"models.yaml": b64("served: [team-key]\n")}}
        response = await kube.patch(
            f"/api/v1/namespaces/{ns}/secrets/gateway-keys",
            json=added,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        response.raise_for_status()

        async def team_key_works() -> bool:
            team = {"Authorization": "Bearer team-key"}
            answer = await client.post("/v1/chat/completions", json=body, headers=team)
            return answer.status_code == 200

        await gateway.wait_for(team_key_works, "the Secret's new key accepted")

        (await kube.delete(f"{NIMSERVICES.format(ns=ns)}/llm")).raise_for_status()

        async def gone() -> bool:
            return (await client.post("/v1/chat/completions", json=body)).status_code == 404

        await gateway.wait_for(gone, "the model unknown once its NIMService is deleted")
