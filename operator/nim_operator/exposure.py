"""Exposure beyond the Service: which Gateway API kinds the cluster serves, what the NIMService's
`Exposed` condition says, and its external endpoint.

The Ingress is a built-in kind; HTTPRoute and GRPCRoute exist only where the Gateway API CRDs
are installed. Without them the routes are left out (reconcile neither applies nor deletes
them: there can be none) and `Exposed` is False with reason GatewayAPIMissing. That is not a
failure of the reconcile, so kopf does not retry it; the timer's runs ask discovery again
(through the CapabilityCache, at most once per capability TTL) and create the routes once the
CRDs appear. With `expose.router.eppConfig`, the Gateway sends every request through the
endpoint picker first, so `Exposed` is True only once the picker's Deployment has a ready
replica. Everything except `gateway_support` and `read_endpoint_picker` is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from nim_operator.conditions import ConditionReport
from nim_operator.kube import CapabilityCache, KubeClient, ResourceKind
from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner
from nim_operator.render.endpoint_picker import endpoint_picker_name
from nim_operator.render.httproute import GATEWAY_API_VERSION
from nim_operator.render.inference_pool import INFERENCE_POOL_API_VERSION
from nim_operator.render.ingress import ingress_host, render_ingress

__all__ = [
    "EXPOSED",
    "GatewaySupport",
    "exposure_report",
    "external_endpoint",
    "gateway_support",
    "previous_service_name",
    "read_endpoint_picker",
]

EXPOSED = "Exposed"
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")


@dataclass(frozen=True)
class GatewaySupport:
    """Whether the cluster serves HTTPRoutes and GRPCRoutes (gateway.networking.k8s.io/v1),
    and InferencePools (inference.networking.k8s.io/v1, the Gateway API Inference Extension)."""

    http_routes: bool = False
    grpc_routes: bool = False
    inference_pools: bool = False


async def gateway_support(capabilities: CapabilityCache) -> GatewaySupport:
    # Asked whether or not this NIMService wants routes: one it no longer wants may still have
    # routes to delete.
    return GatewaySupport(
        http_routes=await capabilities.has(GATEWAY_API_VERSION, "httproutes"),
        grpc_routes=await capabilities.has(GATEWAY_API_VERSION, "grpcroutes"),
        inference_pools=await capabilities.has(INFERENCE_POOL_API_VERSION, "inferencepools"),
    )


async def read_endpoint_picker(
    kube: KubeClient, owner: Owner, spec: NIMServiceSpec, support: GatewaySupport
) -> Mapping[str, Any] | None:
    """The endpoint picker's Deployment when the spec has one and the cluster serves it."""
    router = spec.expose.router
    if router is None or router.epp_config is None or not support.inference_pools:
        return None
    return await kube.get(DEPLOYMENTS, owner.namespace, endpoint_picker_name(owner.name))


def _ready_replicas(deployment: Mapping[str, Any] | None) -> int:
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)


def _missing_kinds(spec: NIMServiceSpec, support: GatewaySupport) -> list[str]:
    gateway = spec.expose.gateway()
    if gateway is None:
        return []
    wanted = (
        ("HTTPRoute", gateway.http_routes_enabled, support.http_routes),
        ("GRPCRoute", _grpc_route_wanted(spec), support.grpc_routes),
    )
    return [kind for kind, on, served in wanted if on and not served]


def _grpc_route_wanted(spec: NIMServiceSpec) -> bool:
    gateway = spec.expose.gateway()
    return (
        gateway is not None
        and gateway.grpc_routes_enabled
        and not spec.expose.grpc_route_without_port()
    )


def exposure_report(
    owner: Owner,
    spec: NIMServiceSpec,
    support: GatewaySupport,
    endpoint_picker: Mapping[str, Any] | None = None,
) -> ConditionReport | None:
    """The `Exposed` condition, or None when only the plain Service is asked for.

    `endpoint_picker` is the picker's live Deployment (read_endpoint_picker), None before it
    exists."""
    missing = _missing_kinds(spec, support)
    if missing:
        return ConditionReport(
            EXPOSED,
            "False",
            "GatewayAPIMissing",
            f"expose.router.gateway is set but the cluster does not serve {' or '.join(missing)} "
            f"({GATEWAY_API_VERSION}): install the Gateway API CRDs; the routes are created "
            "once they are served",
        )
    epp = spec.expose.router.epp_config if spec.expose.router is not None else None
    if epp is not None and not support.inference_pools:
        return ConditionReport(
            EXPOSED,
            "False",
            "InferencePoolAPIMissing",
            "expose.router.eppConfig is set but the cluster does not serve InferencePool "
            f"({INFERENCE_POOL_API_VERSION}): install the Gateway API Inference Extension "
            "CRDs; the InferencePool and its endpoint picker are created once it is served",
        )
    parts = []
    if render_ingress(owner, spec) is not None:
        hosted = ingress_host(owner, spec)
        parts.append(f"Ingress {owner.name}" + (f" for host {hosted[0]}" if hosted else ""))
    gateway = spec.expose.gateway()
    if gateway is not None:
        kinds = [
            kind
            for kind, on in (
                ("HTTPRoute", gateway.http_routes_enabled),
                ("GRPCRoute", _grpc_route_wanted(spec)),
            )
            if on
        ]
        if kinds:
            parts.append(
                f"{' and '.join(kinds)} {owner.name} on Gateway {gateway.namespace}/{gateway.name}"
            )
    if epp is not None:
        parts.append(
            f"InferencePool {owner.name} with endpoint picker {endpoint_picker_name(owner.name)}"
        )
    service = spec.expose.service
    if service.grpc_port is not None:
        parts.append(
            f"Service port grpc ({service.grpc_port}): nim-server serves no gRPC, so only an "
            "image that does answers there"
        )
    if service.metrics_port is not None:
        parts.append(
            f"Service port metrics ({service.metrics_port}): nim-server serves its metrics on "
            "port api, so only an image with a separate metrics endpoint answers there"
        )
    applied = f"; applied: {'; '.join(parts)}" if parts else ""
    if epp is not None and _ready_replicas(endpoint_picker) < 1:
        # Through an InferencePool the Gateway asks the picker for every request: none answers.
        return ConditionReport(
            EXPOSED,
            "False",
            "EndpointPickerNotReady",
            f"endpoint picker {endpoint_picker_name(owner.name)} has no ready replica: the "
            f"Gateway cannot route through InferencePool {owner.name} yet{applied}",
        )
    if spec.expose.grpc_route_without_port():
        # Accepted, as NVIDIA's CRD accepts it, but a GRPCRoute needs a port to send to (NVIDIA's
        # operator would apply one without rules); the rest is applied.
        return ConditionReport(
            EXPOSED,
            "False",
            "GRPCPortMissing",
            "expose.router.gateway.grpcRoutesEnabled is set but expose.service.grpcPort is not: "
            f"no GRPCRoute is created until grpcPort names the port it sends to{applied}",
        )
    if not parts:
        return None
    return ConditionReport(EXPOSED, "True", "Applied", "; ".join(parts))


def external_endpoint(owner: Owner, spec: NIMServiceSpec, support: GatewaySupport) -> str | None:
    """Base URL of the API from outside the cluster, when a host routes to it.

    An Ingress host is https when its TLS section names it. A Gateway's listeners (and so its
    scheme) are the cluster's, not ours to read: its host is reported as http.
    """
    hosted = ingress_host(owner, spec)
    if hosted is not None:
        return f"{'https' if hosted[1] else 'http'}://{hosted[0]}"
    gateway = spec.expose.gateway()
    router = spec.expose.router
    if gateway is not None and router is not None and gateway.http_routes_enabled:
        route_host = router.host(owner.name, owner.namespace)
        if route_host is not None and support.http_routes:
            return f"http://{route_host}"
    return None


def previous_service_name(status: Mapping[str, Any]) -> str | None:
    """The Service name in the endpoint a status reports (to delete it once renamed).

    The status is the only record of an earlier expose.service.name; reading it costs nothing,
    where listing the namespace's Services on every run would.
    """
    endpoint = (status.get("model") or {}).get("clusterEndpoint") or status.get("endpoint")
    if not isinstance(endpoint, str):
        return None
    host = urlsplit(endpoint).hostname or ""
    return host.split(".", 1)[0] or None
