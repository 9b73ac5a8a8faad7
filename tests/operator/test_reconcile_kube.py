"""The API helper against the emulator over HTTP, with faults injected by kmock reactions."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import kmock
import kopf
import pytest
import pytest_asyncio

from nim_operator.kube import ApiError, CapabilityCache, KubeClient, ResourceKind, TransientApiError
from tests.support.kmock_cluster import EmulatedCluster

SERVICES = ResourceKind("v1", "services")
SERVICES_RESOURCE = kmock.resource("", "v1", "services")
NS = "apps"
SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": NS},
    "spec": {"ports": [{"name": "http", "port": 80}]},
}


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster() as emulated:
        yield emulated


@pytest_asyncio.fixture(loop_scope="session")
async def kube(cluster: EmulatedCluster) -> AsyncIterator[KubeClient]:
    client = KubeClient(kopf.ConnectionInfo(server=cluster.url), retries=3, backoff=0.01)
    yield client
    await client.close()


def served(cluster: EmulatedCluster, method: str) -> int:
    """How many requests of `method` to Services the emulator saw."""
    return cluster.inspect(
        lambda e: sum(1 for r in e if r.method == method and r.resource == SERVICES_RESOURCE)
    )


async def test_absent_objects_are_answers_not_errors(kube: KubeClient) -> None:
    assert await kube.get(SERVICES, NS, "web") is None
    assert await kube.delete(SERVICES, NS, "web") is False
    assert await kube.merge_patch(SERVICES, NS, "web", {"metadata": {"labels": {"a": "b"}}}) is None


async def test_delete_with_a_stale_uid_leaves_the_new_object(kube: KubeClient) -> None:
    first = await kube.apply(SERVICES, SERVICE, field_manager="test")
    await kube.delete(SERVICES, NS, "web")
    await kube.apply(SERVICES, SERVICE, field_manager="test")
    assert await kube.delete(SERVICES, NS, "web", uid=first["metadata"]["uid"]) is False
    assert await kube.get(SERVICES, NS, "web") is not None


async def test_transient_failures_are_retried(cluster: EmulatedCluster, kube: KubeClient) -> None:
    cluster.inspect(lambda e: e["patch", SERVICES_RESOURCE][:2] << 503)
    applied = await kube.apply(SERVICES, SERVICE, field_manager="test")
    assert applied["spec"]["ports"][0]["port"] == 80
    assert served(cluster, "PATCH") == 3


async def test_retries_are_bounded(cluster: EmulatedCluster, kube: KubeClient) -> None:
    cluster.inspect(lambda e: e["patch", SERVICES_RESOURCE] << 500)
    with pytest.raises(TransientApiError) as failed:
        await kube.apply(SERVICES, SERVICE, field_manager="test")
    assert failed.value.status == 500
    assert served(cluster, "PATCH") == 4  # the first try and three retries


async def test_client_errors_are_not_retried(cluster: EmulatedCluster, kube: KubeClient) -> None:
    forbidden = kmock.Response(
        status=403,
        payload={"kind": "Status", "reason": "Forbidden", "message": 'services "web" is forbidden'},
    )
    cluster.inspect(lambda e: e["patch", SERVICES_RESOURCE] << forbidden)
    with pytest.raises(ApiError) as failed:
        await kube.apply(SERVICES, SERVICE, field_manager="test")
    assert not isinstance(failed.value, TransientApiError)
    assert (failed.value.status, failed.value.reason) == (403, "Forbidden")
    assert "is forbidden" in failed.value.message
    assert served(cluster, "PATCH") == 1


async def test_retry_after_is_honoured(cluster: EmulatedCluster, kube: KubeClient) -> None:
    throttled = kmock.Response(status=429, headers={"Retry-After": "1"}, payload={})
    cluster.inspect(lambda e: e["get", SERVICES_RESOURCE][:1] << throttled)
    started = time.monotonic()
    assert await kube.get(SERVICES, NS, "web") is None
    assert time.monotonic() - started >= 0.9


async def test_an_expired_token_logs_in_again(cluster: EmulatedCluster) -> None:
    logins: list[str] = []

    async def relogin() -> kopf.ConnectionInfo:
        logins.append("again")
        return kopf.ConnectionInfo(server=cluster.url, token="fresh")

    cluster.inspect(lambda e: e["get", SERVICES_RESOURCE][:1] << 401)
    client = KubeClient(kopf.ConnectionInfo(server=cluster.url, token="stale"), relogin=relogin)
    try:
        assert await client.get(SERVICES, NS, "web") is None
    finally:
        await client.close()
    assert logins == ["again"]
    tokens = cluster.inspect(
        lambda e: [r.headers.get("Authorization") for r in e if r.resource == SERVICES_RESOURCE]
    )
    assert tokens == ["Bearer stale", "Bearer fresh"]


async def test_an_unreachable_server_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        client = KubeClient(
            kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}"), retries=1, backoff=0.01
        )
        try:
            with pytest.raises(TransientApiError):
                await client.get(SERVICES, NS, "web")
        finally:
            await client.close()


async def test_discovery_answers_whether_a_crd_is_installed(kube: KubeClient) -> None:
    assert await kube.has_resource("apps/v1", "deployments")
    assert await kube.has_resource("v1", "pods")
    assert not await kube.has_resource("monitoring.coreos.com/v1", "servicemonitors")


async def test_capabilities_are_cached_and_rechecked(
    cluster: EmulatedCluster, kube: KubeClient
) -> None:
    now = [0.0]
    cache = CapabilityCache(kube, ttl=60, clock=lambda: now[0])
    assert not await cache.has("monitoring.coreos.com/v1", "servicemonitors")

    servicemonitors_crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"},
            "versions": [{"name": "v1", "served": True, "storage": True}],
        },
    }
    cluster.inspect(lambda e: e.register_crd(servicemonitors_crd))
    now[0] = 30.0
    assert not await cache.has("monitoring.coreos.com/v1", "servicemonitors")  # still cached
    now[0] = 61.0
    assert await cache.has("monitoring.coreos.com/v1", "servicemonitors")  # re-checked


def test_urls_follow_the_api_layout() -> None:
    assert (
        ResourceKind("v1", "pods").path("ns", "p", "status")
        == "/api/v1/namespaces/ns/pods/p/status"
    )
    assert (
        ResourceKind("apps/v1", "deployments").path("ns")
        == "/apis/apps/v1/namespaces/ns/deployments"
    )
    namespaces = ResourceKind("v1", "namespaces", namespaced=False)
    assert namespaces.path(None, "default") == "/api/v1/namespaces/default"
