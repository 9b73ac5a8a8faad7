"""The gateway's RBAC (manifests/gateway), cross-checked against the API calls it really makes.

The emulator enforces what the built install binds to the gateway's ServiceAccount, for the
gateway's bearer token, as a real API server would (403 for anything not granted), and records
every grant a request used. The real `nim-gateway` process, with the manifest's environment,
then lists and watches NIMServices and EndpointSlices, reads its key Secret, and routes a
request to a replica (a stub: no engine is needed to prove the discovery). Then: nothing was
refused, and the permissions used are exactly the permissions granted.

Two installs: the component as shipped (every namespace, a ClusterRoleBinding), and the
namespaced variant docs/gateway.md describes (NIM_GATEWAY_NAMESPACES set, the same ClusterRole
bound by a RoleBinding in that namespace only, built with the patches the docs show), in which
the NIMService of another namespace stays unknown to the gateway.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import StubReplica, running_gateway
from tests.gateway.test_discovery_kubernetes import endpoint_slice, nimservice
from tests.support.gateway_install import (
    GATEWAY_ACCOUNT,
    GATEWAY_NAMESPACE,
    build_with_gateway,
    gateway_container,
    manifest_env,
)
from tests.support.kmock_cluster import EmulatedCluster, project_crds
from tests.support.kmock_rbac import Permission, RbacAuthorizer, bound_permissions

GATEWAY_TOKEN = "token-of-the-nim-gateway-service-account"
GATEWAY_USER = f"system:serviceaccount:{GATEWAY_NAMESPACE}:{GATEWAY_ACCOUNT}"
ADMIN = {"Authorization": "Bearer admin"}
KEY = "cluster-key"


@pytest.fixture(scope="module")
def built() -> list[dict[str, Any]]:
    return build_with_gateway()


# docs/gateway.md, "Install on a cluster": serving some namespaces only.
NAMESPACED_PATCHES = (
    """
apiVersion: apps/v1
kind: Deployment
metadata: {name: nim-gateway, namespace: nimstack-system}
spec:
  template:
    spec:
      containers:
        - name: gateway
          env:
            - name: NIM_GATEWAY_NAMESPACES
              value: team-b
""",
    """
$patch: delete
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: nim-gateway}
""",
)
TEAM_B_BINDING = """
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: nim-gateway, namespace: team-b}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: nim-gateway}
subjects: [{kind: ServiceAccount, name: nim-gateway, namespace: nimstack-system}]
"""


@dataclass
class Exercise:
    granted: set[Permission]
    used: set[Permission]
    denied: list[tuple[Permission, str]]
    # Model ids the gateway listed at the end.
    models: list[str]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def replicas(stubs: list[StubReplica]) -> dict[str, StubReplica]:
    """One replica per team namespace, each serving its namespace's model."""
    started = {}
    for namespace in ("team-a", "team-b"):
        stub = StubReplica(models=[{"id": f"model-{namespace}", "object": "model"}])
        await stub.start()
        stubs.append(stub)
        started[namespace] = stub
    return started


async def exercise(
    docs: list[dict[str, Any]], env: dict[str, str], work: Path, stubs: dict[str, StubReplica]
) -> Exercise:
    granted = bound_permissions(docs, namespace=GATEWAY_NAMESPACE, service_account=GATEWAY_ACCOUNT)
    authorizer = RbacAuthorizer(granted, token=GATEWAY_TOKEN, user=GATEWAY_USER)
    with EmulatedCluster(project_crds(), authorizer=authorizer) as cluster:
        async with httpx.AsyncClient(base_url=cluster.url, headers=ADMIN) as admin:
            for namespace in (GATEWAY_NAMESPACE, "team-a", "team-b"):
                body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
                (await admin.post("/api/v1/namespaces", json=body)).raise_for_status()
            keys = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "nim-gateway-keys"},
                "data": {"api-key": b64(KEY)},
            }
            response = await admin.post(
                f"/api/v1/namespaces/{GATEWAY_NAMESPACE}/secrets", json=keys
            )
            response.raise_for_status()
            for namespace in ("team-a", "team-b"):
                service = nimservice("llm")
                service["spec"]["model"] = {"servedName": f"model-{namespace}"}
                path = f"/apis/nimstack.dev/v1alpha1/namespaces/{namespace}/nimservices"
                (await admin.post(path, json=service)).raise_for_status()
                ready = endpoint_slice("llm", "a", stubs[namespace].port, [("127.0.0.1", True)])
                path = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
                (await admin.post(path, json=ready)).raise_for_status()
            kubeconfig = cluster.write_kubeconfig(work / "kubeconfig", token=GATEWAY_TOKEN)
            async with (
                running_gateway(
                    work,
                    None,
                    env={**env, "KUBECONFIG": str(kubeconfig)},
                    api_key=KEY,
                    key_in_env=False,
                ) as gateway,
                httpx.AsyncClient(
                    base_url=gateway.base_url, headers=gateway.headers, timeout=30
                ) as client,
            ):
                listed = (await client.get("/v1/models")).json()["data"]
                models = sorted(m["id"] for m in listed)
                body = {"model": models[0], "messages": [{"role": "user", "content": "hi"}]}
                response = await client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text
    return Exercise(granted, authorizer.used, authorizer.denied, models)


async def test_the_shipped_install_grants_exactly_what_the_gateway_uses(
    built: list[dict[str, Any]], stubs: list[StubReplica], tmp_path: Path
) -> None:
    env = manifest_env(gateway_container(built), pod="nim-gateway-0")
    assert env["NIM_GATEWAY_NAMESPACES"] == ""
    result = await exercise(built, env, tmp_path, await replicas(stubs))
    assert result.denied == []
    assert result.used == result.granted
    assert result.models == ["model-team-a", "model-team-b"]
    assert Permission("", "secrets", "get", GATEWAY_NAMESPACE, "nim-gateway-keys") in result.used


async def test_the_namespaced_variant_grants_exactly_what_the_gateway_uses(
    stubs: list[StubReplica], tmp_path: Path
) -> None:
    docs = build_with_gateway(
        patches=NAMESPACED_PATCHES, files={"team-b-binding.yaml": TEAM_B_BINDING}
    )
    assert not [d for d in docs if d["kind"] == "ClusterRoleBinding" and "gateway" in str(d)]
    env = manifest_env(gateway_container(docs), pod="nim-gateway-0")
    assert env["NIM_GATEWAY_NAMESPACES"] == "team-b"
    result = await exercise(docs, env, tmp_path, await replicas(stubs))
    assert result.denied == []
    assert result.used == result.granted
    assert {p.namespace for p in result.used} == {GATEWAY_NAMESPACE, "team-b"}
    assert result.models == ["model-team-b"]
