"""The API-server emulator behaves like the API server where the operator's tests rely on it.

If the emulator were more forgiving than Kubernetes (e.g. kept a field a manager stopped
applying), the kmock end-to-end tests could pass for an operator that fails on a cluster. These
tests pin the behaviours down, each as the Kubernetes documentation describes it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kopf
import pytest
import pytest_asyncio

from nim_operator.kube import ApiError, KubeClient, ResourceKind
from tests.support.kmock_cluster import EmulatedCluster

DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
PODS = ResourceKind("v1", "pods")
NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
NS = "emu"


def deployment(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}},
            **spec,
        },
    }


@pytest_asyncio.fixture(loop_scope="session")
async def kube(cluster: EmulatedCluster) -> AsyncIterator[KubeClient]:
    client = KubeClient(kopf.ConnectionInfo(server=cluster.url), retries=0)
    yield client
    await client.close()


async def test_dropping_a_field_you_alone_applied_removes_it(kube: KubeClient) -> None:
    await kube.apply(DEPLOYMENTS, deployment(replicas=3), field_manager="a")
    dropped = await kube.apply(DEPLOYMENTS, deployment(), field_manager="a")
    assert dropped["spec"]["replicas"] == 1  # removed, then defaulted


async def test_a_co_owner_keeps_a_dropped_field(kube: KubeClient) -> None:
    await kube.apply(DEPLOYMENTS, deployment(replicas=3), field_manager="a")
    only_replicas = {**deployment(replicas=3), "spec": {"replicas": 3}}
    await kube.apply(DEPLOYMENTS, only_replicas, field_manager="b")
    kept = await kube.apply(DEPLOYMENTS, deployment(), field_manager="a")
    assert kept["spec"]["replicas"] == 3


async def test_conflicts_need_force(kube: KubeClient) -> None:
    await kube.apply(DEPLOYMENTS, deployment(replicas=3), field_manager="a")
    with pytest.raises(ApiError) as conflict:
        await kube.apply(DEPLOYMENTS, deployment(replicas=5), field_manager="b", force=False)
    assert conflict.value.status == 409
    taken = await kube.apply(DEPLOYMENTS, deployment(replicas=5), field_manager="b", force=True)
    assert taken["spec"]["replicas"] == 5
    owners = {
        e["manager"] for e in taken["metadata"]["managedFields"] if "f:replicas" in json.dumps(e)
    }
    assert owners == {"b"}


async def test_an_update_takes_ownership_of_what_it_changes(kube: KubeClient) -> None:
    await kube.apply(DEPLOYMENTS, deployment(replicas=3), field_manager="a")
    await kube.merge_patch(
        DEPLOYMENTS, NS, "web", {"spec": {"replicas": 4}}, subresource="scale", field_manager="hpa"
    )
    # "a" no longer owns replicas, so dropping it from a's config leaves it alone.
    kept = await kube.apply(DEPLOYMENTS, deployment(), field_manager="a")
    assert kept["spec"]["replicas"] == 4


async def test_a_no_op_apply_writes_nothing(kube: KubeClient) -> None:
    first = await kube.apply(DEPLOYMENTS, deployment(replicas=2), field_manager="a")
    again = await kube.apply(DEPLOYMENTS, deployment(replicas=2), field_manager="a")
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert again["metadata"]["generation"] == 1


async def test_generation_counts_spec_changes_only(kube: KubeClient) -> None:
    await kube.apply(DEPLOYMENTS, deployment(replicas=2), field_manager="a")
    labelled = await kube.merge_patch(DEPLOYMENTS, NS, "web", {"metadata": {"labels": {"x": "y"}}})
    assert labelled is not None
    assert labelled["metadata"]["generation"] == 1
    status = await kube.merge_patch(
        DEPLOYMENTS, NS, "web", {"status": {"readyReplicas": 2}}, subresource="status"
    )
    assert status is not None
    assert status["metadata"]["generation"] == 1
    scaled = await kube.merge_patch(DEPLOYMENTS, NS, "web", {"spec": {"replicas": 3}})
    assert scaled is not None
    assert scaled["metadata"]["generation"] == 2


async def test_the_status_subresource_is_separate(kube: KubeClient) -> None:
    await kube.apply(DEPLOYMENTS, deployment(replicas=2), field_manager="a")
    main = await kube.merge_patch(
        DEPLOYMENTS, NS, "web", {"status": {"readyReplicas": 9}, "spec": {"paused": True}}
    )
    assert main is not None
    assert (
        main["status"] == {}
    )  # a new Deployment's, as the API server gives it; the patch's is ignored
    status = await kube.merge_patch(
        DEPLOYMENTS,
        NS,
        "web",
        {"status": {"readyReplicas": 2}, "spec": {"paused": False}},
        subresource="status",
    )
    assert status is not None
    assert status["status"] == {"readyReplicas": 2}
    assert status["spec"]["paused"] is True  # ignored on /status


async def test_undeclared_custom_resource_fields_are_pruned(kube: KubeClient) -> None:
    body = {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": "llm", "namespace": NS},
        "spec": {"image": {"repository": "r", "tag": "t"}, "madeUp": 1},
    }
    created = await kube.create(NIMSERVICES, NS, body)
    assert "madeUp" not in created["spec"]
    patched = await kube.merge_patch(
        NIMSERVICES, NS, "llm", {"status": {"state": "Ready", "mood": "good"}}, subresource="status"
    )
    assert patched is not None
    assert patched["status"] == {"state": "Ready"}


async def test_deleting_an_owner_deletes_its_dependents(kube: KubeClient) -> None:
    await kube.create(NAMESPACES, None, {"metadata": {"name": NS}})
    owner = await kube.apply(DEPLOYMENTS, deployment(), field_manager="a")
    reference = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "web",
        "uid": owner["metadata"]["uid"],
        "controller": True,
    }
    pod = {"metadata": {"name": "web-1", "namespace": NS, "ownerReferences": [reference]}}
    await kube.create(PODS, NS, pod)
    await kube.delete(DEPLOYMENTS, NS, "web")
    assert await kube.get(PODS, NS, "web-1") is None
    # ... and a dependent created for an owner that is gone does not stay either.
    await kube.create(PODS, NS, pod)
    assert await kube.get(PODS, NS, "web-1") is None


async def test_watches_filter_by_label_and_resume_from_a_version(
    cluster: EmulatedCluster, kube: KubeClient
) -> None:
    listed = await kube.create(PODS, NS, {"metadata": {"name": "a", "labels": {"app": "x"}}})
    since = listed["metadata"]["resourceVersion"]
    await kube.create(PODS, NS, {"metadata": {"name": "b", "labels": {"app": "y"}}})
    await kube.create(PODS, NS, {"metadata": {"name": "c", "labels": {"app": "x"}}})
    url = f"{cluster.url}/api/v1/namespaces/{NS}/pods"
    params = {
        "watch": "true",
        "resourceVersion": since,
        "labelSelector": "app=x",
        "timeoutSeconds": "1",
    }
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as response:
        lines = [json.loads(line) async for line in response.content if line.strip()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [("ADDED", "c")]
    selected = await kube.list(PODS, NS, label_selector="app in (x, z),!missing")
    assert sorted(p["metadata"]["name"] for p in selected) == ["a", "c"]


async def test_a_watch_sees_every_later_change(cluster: EmulatedCluster, kube: KubeClient) -> None:
    url = f"{cluster.url}/api/v1/namespaces/{NS}/pods"
    seen: list[tuple[str, str]] = []

    async def watch() -> None:
        async with aiohttp.ClientSession() as session:
            params = {"watch": "true", "timeoutSeconds": "2"}
            async with session.get(url, params=params) as response:
                async for line in response.content:
                    if line.strip():
                        event = json.loads(line)
                        seen.append((event["type"], event["object"]["metadata"]["name"]))

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    for name in ("p1", "p2"):
        await kube.create(PODS, NS, {"metadata": {"name": name}})
    await kube.delete(PODS, NS, "p1")
    await watcher
    assert seen == [("ADDED", "p1"), ("ADDED", "p2"), ("DELETED", "p1")]
