"""End-to-end: expose.service.name/grpcPort, expose.ingress and expose.router, with the real
operator process (on kmock, or a real cluster with KUBECONFIG).

Ingresses are built-in, so the strict emulator checks each applied Ingress against Kubernetes'
own types. HTTPRoutes need the Gateway API CRDs: on kmock the test starts without them (the
NIMService says GatewayAPIMissing and runs anyway), then installs them and sees the route
appear; on a real cluster it uses what is installed and installs nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from nim_operator.kube import ResourceKind
from tests.operator.test_operator_e2e import (
    DEPLOYMENTS,
    E2E,
    NIMSERVICES,
    SERVICES,
    condition,
    cpu_spec,
)
from tests.support.gateway_api import GATEWAY_API_CRDS
from tests.support.kmock_cluster import EmulatedCluster
from tests.support.kmock_harness import install_crds

INGRESSES = ResourceKind("networking.k8s.io/v1", "ingresses")
HTTP_ROUTES = ResourceKind("gateway.networking.k8s.io/v1", "httproutes")
GRPC_ROUTES = ResourceKind("gateway.networking.k8s.io/v1", "grpcroutes")


def ingress(host: str, **extra: Any) -> dict[str, Any]:
    rule = {"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix"}]}}
    return {"enabled": True, "spec": {"rules": [rule], **extra}}


def external(obj: dict[str, Any]) -> str | None:
    return ((obj.get("status") or {}).get("model") or {}).get("externalEndpoint")


async def test_an_ingress_follows_the_spec_on_off_and_in_between(e2e: E2E) -> None:
    await e2e.create("llm", cpu_spec(expose={"ingress": ingress("llm.example.com")}))
    created = await e2e.child(INGRESSES, "llm")
    nim = await e2e.status_where(
        "llm", lambda o: external(o) == "http://llm.example.com", "externalEndpoint from the host"
    )
    assert created["metadata"]["ownerReferences"][0]["uid"] == nim["metadata"]["uid"]
    (path,) = created["spec"]["rules"][0]["http"]["paths"]
    assert path["backend"] == {"service": {"name": "llm", "port": {"name": "api"}}}
    assert condition(nim, "Exposed")["status"] == "True"

    tls = {"tls": [{"hosts": ["chat.example.com"], "secretName": "chat-tls"}]}
    await e2e.patch_spec("llm", {"expose": {"ingress": ingress("chat.example.com", **tls)}})

    async def moved() -> bool:
        live = await e2e.get(INGRESSES, "llm")
        return live is not None and live["spec"]["rules"][0]["host"] == "chat.example.com"

    await e2e.until(moved, "the Ingress on the new host")
    await e2e.status_where(
        "llm", lambda o: external(o) == "https://chat.example.com", "https externalEndpoint"
    )

    await e2e.patch_spec("llm", {"expose": {"ingress": {"enabled": False}}})
    await e2e.deleted(INGRESSES, "llm")
    nim = await e2e.status_where(
        "llm", lambda o: external(o) is None, "no externalEndpoint without an Ingress"
    )
    assert condition(nim, "Exposed") == {}
    assert await e2e.get(SERVICES, "llm") is not None


async def test_a_hand_deleted_ingress_is_put_back(e2e: E2E) -> None:
    router = {"hostDomainName": "example.com", "ingress": {"ingressClass": "nginx"}}
    await e2e.create("llm", cpu_spec(expose={"router": router}))
    first = await e2e.child(INGRESSES, "llm")
    assert first["spec"]["rules"][0]["host"] == f"llm.{e2e.namespace}.example.com"
    await e2e.api.delete(INGRESSES, e2e.namespace, "llm")

    async def recreated() -> dict[str, Any] | None:
        live = await e2e.get(INGRESSES, "llm")
        return live if live and live["metadata"]["uid"] != first["metadata"]["uid"] else None

    await e2e.until(recreated, "the Ingress re-created by the timer")


async def test_a_renamed_service_with_a_grpc_port(e2e: E2E) -> None:
    await e2e.create("llm", cpu_spec())
    await e2e.child(SERVICES, "llm")
    await e2e.patch_spec("llm", {"expose": {"service": {"name": "llm-api", "grpcPort": 8001}}})
    renamed = await e2e.child(SERVICES, "llm-api")
    assert [(p["name"], p["port"]) for p in renamed["spec"]["ports"]] == [
        ("api", 8000),
        ("grpc", 8001),
    ]
    await e2e.deleted(SERVICES, "llm")
    nim = await e2e.status_where(
        "llm",
        lambda o: "llm-api." in ((o.get("status") or {}).get("endpoint") or ""),
        "the endpoint names the renamed Service",
    )
    assert "nim-server serves no gRPC" in condition(nim, "Exposed")["message"]

    await e2e.patch_spec("llm", {"expose": {"service": {"name": None, "grpcPort": None}}})
    await e2e.child(SERVICES, "llm")
    await e2e.deleted(SERVICES, "llm-api")


async def exposure_waits_for_an_api(e2e: E2E, reason: str) -> dict[str, Any]:
    """`llm`, once Exposed is False for `reason`: not Failed, and its Deployment created."""
    nim = await e2e.status_where(
        "llm", lambda o: condition(o, "Exposed").get("reason") == reason, f"Exposed {reason}"
    )
    assert condition(nim, "Exposed")["status"] == "False"
    assert condition(nim, "Failed")["status"] == "False"  # the server runs: not a failure
    await e2e.child(DEPLOYMENTS, "llm")
    return nim


async def test_routes_wait_for_the_gateway_api_then_follow_the_spec(
    e2e: E2E, emulated: EmulatedCluster | None
) -> None:
    served = await e2e.api.has_resource("gateway.networking.k8s.io/v1", "httproutes")
    if not served and emulated is None:
        pytest.skip("this cluster has no Gateway API CRDs (the test installs none on a real one)")
    gateway = {"namespace": "gateways", "name": "public"}
    await e2e.create(
        "llm", cpu_spec(expose={"router": {"hostDomainName": "example.com", "gateway": gateway}})
    )
    host = f"llm.{e2e.namespace}.example.com"
    if not served:
        nim = await exposure_waits_for_an_api(e2e, "GatewayAPIMissing")
        assert external(nim) is None

        async def warned() -> list[dict[str, Any]]:
            return [
                e
                for e in await e2e.events_for("llm")
                if e.get("type") == "Warning" and e.get("reason") == "GatewayAPIMissing"
            ]

        await e2e.until(warned, "a Warning Event GatewayAPIMissing")
        await install_crds(e2e.api, GATEWAY_API_CRDS, field_manager="nimstack-e2e")

    route = await e2e.child(HTTP_ROUTES, "llm")
    assert route["spec"]["hostnames"] == [host]
    assert route["spec"]["parentRefs"][0]["name"] == "public"
    nim = await e2e.status_where(
        "llm", lambda o: external(o) == f"http://{host}", "externalEndpoint from the route host"
    )
    assert condition(nim, "Exposed")["reason"] == "Applied"
    assert (nim.get("metadata") or {}).get("uid") == route["metadata"]["ownerReferences"][0]["uid"]

    await e2e.patch_spec("llm", {"expose": {"router": None}})
    await e2e.deleted(HTTP_ROUTES, "llm")
    assert await e2e.get(NIMSERVICES, "llm") is not None
    assert await e2e.get(GRPC_ROUTES, "llm") is None
