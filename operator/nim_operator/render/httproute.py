"""Gateway API routes `<name>` (gateway.networking.k8s.io/v1), from expose.router.gateway.

An HTTPRoute (unless `httpRoutesEnabled: false`) to the Service's API port (or to
`gateway.backendRef`), and a GRPCRoute
(with `grpcRoutesEnabled`) to its `grpcPort`, both attached to the Gateway `namespace/name`
for the host `<name>.<namespace>.<hostDomainName>` (every host of the Gateway's listener when
hostDomainName is unset). The Gateway itself, its listeners and TLS are the cluster's.
"""

from __future__ import annotations

from typing import Any

from nim_operator.models import NIMServiceSpec, RouterGateway
from nim_operator.render.common import Owner, object_meta
from nim_operator.render.labels import child_labels

__all__ = ["GATEWAY_API_VERSION", "render_grpc_route", "render_http_route"]

GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"


def render_http_route(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    gateway = spec.expose.gateway()
    if gateway is None or not gateway.http_routes_enabled:
        return None
    # gateway.backendRef replaces the Service as the route's backend (NVIDIA: e.g. an
    # InferencePool whose endpoint picker chooses the pod); the GRPCRoute keeps the Service.
    chosen = gateway.backend_ref
    backend = chosen.to_k8s() if chosen is not None else _backend(owner, spec, spec.service_port())
    rule = {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [backend]}
    return _route(owner, spec, gateway, "HTTPRoute", rule)


def render_grpc_route(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    gateway = spec.expose.gateway()
    grpc_port = spec.expose.service.grpc_port
    if gateway is None or not gateway.grpc_routes_enabled or grpc_port is None:
        return None
    return _route(
        owner, spec, gateway, "GRPCRoute", {"backendRefs": [_backend(owner, spec, grpc_port)]}
    )


def _backend(owner: Owner, spec: NIMServiceSpec, port: int) -> dict[str, Any]:
    # Group "" and kind Service are the defaults; written out so that the applied object and
    # the stored one (which the API server defaults) are the same.
    return {"group": "", "kind": "Service", "name": spec.service_name(owner.name), "port": port}


def _route(
    owner: Owner, spec: NIMServiceSpec, gateway: RouterGateway, kind: str, rule: dict[str, Any]
) -> dict[str, Any]:
    router = spec.expose.router
    assert router is not None
    parent = {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "namespace": gateway.namespace,
        "name": gateway.name,
    }
    body: dict[str, Any] = {"parentRefs": [parent]}
    host = router.host(owner.name, owner.namespace)
    if host is not None:
        body["hostnames"] = [host]
    body["rules"] = [rule]
    return {
        "apiVersion": GATEWAY_API_VERSION,
        "kind": kind,
        "metadata": object_meta(
            owner, owner.name, child_labels(owner.name, spec), router.annotations
        ),
        "spec": body,
    }
