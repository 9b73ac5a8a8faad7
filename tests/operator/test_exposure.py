"""nim_operator.exposure: the Exposed condition and status.model.externalEndpoint (pure parts)."""

from __future__ import annotations

from typing import Any

from nim_operator.exposure import (
    GatewaySupport,
    exposure_report,
    external_endpoint,
    previous_service_name,
)
from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")
SERVED = GatewaySupport(http_routes=True, grpc_routes=True)
MISSING = GatewaySupport()
GATEWAY = {"hostDomainName": "example.com", "gateway": {"namespace": "gw", "name": "public"}}


def make_spec(**expose: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate(
        {"image": {"repository": "nim", "tag": "1"}, "expose": expose}
    )


class TestExposureReport:
    def test_nothing_to_say_about_a_plain_service(self) -> None:
        assert exposure_report(OWNER, make_spec(), SERVED) is None

    def test_gateway_api_missing(self) -> None:
        report = exposure_report(OWNER, make_spec(router=GATEWAY), MISSING)
        assert report is not None
        assert (report.type, report.status, report.reason) == (
            "Exposed",
            "False",
            "GatewayAPIMissing",
        )
        assert "HTTPRoute" in report.message
        assert "gateway.networking.k8s.io/v1" in report.message

    def test_grpc_routes_missing_alone(self) -> None:
        router = {**GATEWAY, "gateway": {**GATEWAY["gateway"], "grpcRoutesEnabled": True}}
        spec = make_spec(router=router, service={"grpcPort": 8001})
        report = exposure_report(OWNER, spec, GatewaySupport(http_routes=True))
        assert report is not None
        assert report.reason == "GatewayAPIMissing"
        assert "GRPCRoute" in report.message
        assert "HTTPRoute" not in report.message

    def test_applied_routes_and_the_grpc_caveat(self) -> None:
        router = {**GATEWAY, "gateway": {**GATEWAY["gateway"], "grpcRoutesEnabled": True}}
        spec = make_spec(router=router, service={"grpcPort": 8001})
        report = exposure_report(OWNER, spec, SERVED)
        assert report is not None
        assert (report.status, report.reason) == ("True", "Applied")
        assert "HTTPRoute and GRPCRoute llama on Gateway gw/public" in report.message
        assert "nim-server serves no gRPC" in report.message

    def test_ingress(self) -> None:
        router = {"hostDomainName": "example.com", "ingress": {"ingressClass": "nginx"}}
        report = exposure_report(OWNER, make_spec(router=router), MISSING)
        assert report is not None
        assert report.status == "True"
        assert "Ingress llama for host llama.models.example.com" in report.message

    def test_metrics_port_caveat(self) -> None:
        report = exposure_report(OWNER, make_spec(service={"metricsPort": 9400}), MISSING)
        assert report is not None
        assert "Service port metrics (9400)" in report.message

    def test_an_inference_pool_is_exposed_once_its_endpoint_picker_is_ready(self) -> None:
        image = {"repository": "epp", "tag": "1"}
        epp = {"containerSpec": {"name": "epp", "image": image}, "config": {}}
        spec = make_spec(router={"eppConfig": epp})
        pools = GatewaySupport(inference_pools=True)
        for picker in (None, {"status": {}}, {"status": {"replicas": 1, "readyReplicas": 0}}):
            report = exposure_report(OWNER, spec, pools, picker)
            assert report is not None
            assert (report.status, report.reason) == ("False", "EndpointPickerNotReady")
            assert "endpoint picker llama-epp has no ready replica" in report.message
            assert "applied: InferencePool llama with endpoint picker llama-epp" in report.message
        ready = exposure_report(OWNER, spec, pools, {"status": {"readyReplicas": 1}})
        assert ready is not None
        assert (ready.status, ready.reason) == ("True", "Applied")
        # Without the InferencePool API the CRDs are what is missing, not the picker.
        missing = exposure_report(OWNER, spec, MISSING, None)
        assert missing is not None
        assert missing.reason == "InferencePoolAPIMissing"


class TestExternalEndpoint:
    def test_none_without_a_host(self) -> None:
        assert external_endpoint(OWNER, make_spec(), SERVED) is None
        router = {"gateway": {"namespace": "gw", "name": "public"}}
        assert external_endpoint(OWNER, make_spec(router=router), SERVED) is None

    def test_router_ingress_with_and_without_tls(self) -> None:
        router: dict[str, Any] = {"hostDomainName": "a.io", "ingress": {"ingressClass": "nginx"}}
        assert (
            external_endpoint(OWNER, make_spec(router=router), MISSING)
            == "http://llama.models.a.io"
        )
        router["ingress"]["tlsSecretName"] = "tls"
        assert (
            external_endpoint(OWNER, make_spec(router=router), MISSING)
            == "https://llama.models.a.io"
        )

    def test_http_route_host_once_the_gateway_api_is_served(self) -> None:
        spec = make_spec(router=GATEWAY)
        assert external_endpoint(OWNER, spec, SERVED) == "http://llama.models.example.com"
        assert external_endpoint(OWNER, spec, MISSING) is None

    def test_passed_through_ingress_host(self) -> None:
        rules = [{"host": "llm.corp", "http": {"paths": [{"pathType": "Prefix"}]}}]
        spec = make_spec(ingress={"enabled": True, "spec": {"rules": rules}})
        assert external_endpoint(OWNER, spec, MISSING) == "http://llm.corp"


class TestPreviousServiceName:
    def test_from_the_reported_endpoint(self) -> None:
        status = {"model": {"clusterEndpoint": "http://llm-api.ns.svc.cluster.local:8000"}}
        assert previous_service_name(status) == "llm-api"
        assert previous_service_name({"endpoint": "http://llm.ns.svc.cluster.local:80"}) == "llm"

    def test_none_without_a_status(self) -> None:
        assert previous_service_name({}) is None
