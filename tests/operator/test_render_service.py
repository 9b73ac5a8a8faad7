"""render_service and service_endpoint: how clients reach the API."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_service, selector_labels, service_endpoint

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")


def make_spec(**fields: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate({"image": {"repository": "nim", "tag": "1"}, **fields})


class TestRenderService:
    def test_default_is_cluster_ip_on_8000_named_api(self) -> None:
        service = render_service(OWNER, make_spec())
        assert service["metadata"]["name"] == "llama"
        assert service["spec"] == {
            "type": "ClusterIP",
            "selector": selector_labels("llama"),
            "ports": [{"name": "api", "port": 8000, "targetPort": "api", "protocol": "TCP"}],
        }
        kubernetes_validate.validate(service, "1.31", strict=True)

    def test_expose_settings(self) -> None:
        service = render_service(
            OWNER,
            make_spec(
                expose={
                    "service": {
                        "type": "LoadBalancer",
                        "port": 443,
                        "annotations": {
                            "service.beta.kubernetes.io/aws-load-balancer-internal": "true"
                        },
                        "labels": {"exposed": "yes", "app.kubernetes.io/name": "mine"},
                    }
                }
            ),
        )
        assert service["spec"]["type"] == "LoadBalancer"
        assert service["spec"]["ports"][0]["port"] == 443
        assert service["spec"]["ports"][0]["targetPort"] == "api"
        assert service["metadata"]["annotations"] == {
            "service.beta.kubernetes.io/aws-load-balancer-internal": "true"
        }
        labels = service["metadata"]["labels"]
        assert labels["exposed"] == "yes"
        # The ServiceMonitor selects the Service by our labels, so the user's cannot replace them.
        assert labels["app.kubernetes.io/name"] == "nim-service"
        kubernetes_validate.validate(service, "1.31", strict=True)

    def test_endpoint(self) -> None:
        assert service_endpoint(OWNER, make_spec()) == "http://llama.models.svc.cluster.local:8000"
        spec = make_spec(expose={"service": {"port": 80}})
        assert service_endpoint(OWNER, spec) == "http://llama.models.svc.cluster.local:80"

    def test_grpc_and_metrics_ports_target_the_same_container_ports(self) -> None:
        service = render_service(
            OWNER, make_spec(expose={"service": {"grpcPort": 8001, "metricsPort": 8002}})
        )
        assert service["spec"]["ports"] == [
            {"name": "api", "port": 8000, "targetPort": "api", "protocol": "TCP"},
            {"name": "grpc", "port": 8001, "targetPort": 8001, "protocol": "TCP"},
            {"name": "metrics", "port": 8002, "targetPort": 8002, "protocol": "TCP"},
        ]
        kubernetes_validate.validate(service, "1.31", strict=True)

    def test_name_override(self) -> None:
        spec = make_spec(expose={"service": {"name": "llama-api"}})
        service = render_service(OWNER, spec)
        assert service["metadata"]["name"] == "llama-api"
        assert service["spec"]["selector"] == selector_labels("llama")  # still our pods
        assert service_endpoint(OWNER, spec) == "http://llama-api.models.svc.cluster.local:8000"
