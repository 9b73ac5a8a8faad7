"""render_http_route and render_grpc_route: Gateway API routes from expose.router.gateway."""

from __future__ import annotations

from typing import Any

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_grpc_route, render_http_route

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")
PARENT = {
    "group": "gateway.networking.k8s.io",
    "kind": "Gateway",
    "namespace": "gw",
    "name": "public",
}


def make_spec(router: dict[str, Any] | None = None, **service: Any) -> NIMServiceSpec:
    expose: dict[str, Any] = {"service": service}
    if router is not None:
        expose["router"] = router
    return NIMServiceSpec.model_validate(
        {"image": {"repository": "nim", "tag": "1"}, "expose": expose}
    )


def gateway(**fields: Any) -> dict[str, Any]:
    return {
        "hostDomainName": "example.com",
        "gateway": {"namespace": "gw", "name": "public", **fields},
    }


class TestRenderHTTPRoute:
    def test_none_without_a_gateway(self) -> None:
        assert render_http_route(OWNER, make_spec()) is None
        assert render_http_route(OWNER, make_spec({"ingress": {"ingressClass": "nginx"}})) is None
        assert render_http_route(OWNER, make_spec(gateway(httpRoutesEnabled=False))) is None

    def test_routes_the_host_to_the_api_port(self) -> None:
        route = render_http_route(OWNER, make_spec(gateway(), port=9000))
        assert route is not None
        assert (route["apiVersion"], route["kind"]) == ("gateway.networking.k8s.io/v1", "HTTPRoute")
        assert route["metadata"]["name"] == "llama"
        assert route["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
        assert route["spec"] == {
            "parentRefs": [PARENT],
            "hostnames": ["llama.models.example.com"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [
                        {"group": "", "kind": "Service", "name": "llama", "port": 9000}
                    ],
                }
            ],
        }

    def test_without_a_domain_it_takes_every_host_of_the_listener(self) -> None:
        router = {"annotations": {"a": "b"}, "gateway": {"namespace": "gw", "name": "public"}}
        route = render_http_route(OWNER, make_spec(router, name="llama-api"))
        assert route is not None
        assert "hostnames" not in route["spec"]
        assert route["metadata"]["annotations"] == {"a": "b"}
        assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == "llama-api"

    def test_backend_ref_replaces_the_service(self) -> None:
        """NVIDIA's gateway.backendRef: the route's only backend, as written (e.g. an
        InferencePool); the defaults the CRD writes in (group, kind, weight) are kept."""
        pool = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "llama"}
        route = render_http_route(OWNER, make_spec(gateway(backendRef=pool)))
        assert route is not None
        (rule,) = route["spec"]["rules"]
        assert rule["backendRefs"] == [{**pool, "weight": 1}]
        assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]

    def test_backend_ref_to_another_namespace_keeps_its_port_and_weight(self) -> None:
        ref = {"name": "shared", "namespace": "infra", "port": 8080, "weight": 5}
        route = render_http_route(OWNER, make_spec(gateway(backendRef=ref)))
        assert route is not None
        assert route["spec"]["rules"][0]["backendRefs"] == [{"group": "", "kind": "Service", **ref}]

    def test_grpc_route_keeps_the_service_with_a_backend_ref(self) -> None:
        pool = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "llama"}
        spec = make_spec(gateway(backendRef=pool, grpcRoutesEnabled=True), grpcPort=8001)
        route = render_grpc_route(OWNER, spec)
        assert route is not None
        assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == "llama"
        assert route["spec"]["rules"][0]["backendRefs"][0]["kind"] == "Service"


class TestRenderGRPCRoute:
    def test_only_with_grpc_routes_enabled(self) -> None:
        assert render_grpc_route(OWNER, make_spec(gateway(), grpcPort=8001)) is None
        assert render_grpc_route(OWNER, make_spec()) is None

    def test_routes_the_host_to_the_grpc_port(self) -> None:
        route = render_grpc_route(OWNER, make_spec(gateway(grpcRoutesEnabled=True), grpcPort=8001))
        assert route is not None
        assert (route["apiVersion"], route["kind"]) == ("gateway.networking.k8s.io/v1", "GRPCRoute")
        assert route["spec"] == {
            "parentRefs": [PARENT],
            "hostnames": ["llama.models.example.com"],
            "rules": [
                {"backendRefs": [{"group": "", "kind": "Service", "name": "llama", "port": 8001}]}
            ],
        }
