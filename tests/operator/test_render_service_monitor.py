"""render_service_monitor: Prometheus scrapes /v1/metrics through the Service."""

from __future__ import annotations

from typing import Any

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_service_monitor, selector_labels

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")


def make_spec(**fields: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate({"image": {"repository": "nim", "tag": "1"}, **fields})


class TestRenderServiceMonitor:
    def test_absent_unless_enabled(self) -> None:
        assert render_service_monitor(OWNER, make_spec()) is None

    def test_scrapes_the_api_port(self) -> None:
        monitor = render_service_monitor(OWNER, make_spec(metrics={"enabled": True}))
        assert monitor is not None
        assert (monitor["apiVersion"], monitor["kind"]) == (
            "monitoring.coreos.com/v1",
            "ServiceMonitor",
        )
        assert monitor["spec"] == {
            "selector": {"matchLabels": selector_labels("llama")},
            "endpoints": [{"port": "api", "path": "/v1/metrics"}],
        }
        assert monitor["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid

    def test_a_metrics_port_is_scraped_at_metrics(self) -> None:
        spec = make_spec(metrics={"enabled": True}, expose={"service": {"metricsPort": 8002}})
        monitor = render_service_monitor(OWNER, spec)
        assert monitor is not None
        assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics"}]

    def test_settings(self) -> None:
        metrics = {
            "enabled": True,
            "serviceMonitor": {
                "additionalLabels": {"release": "kube-prometheus-stack"},
                "annotations": {"team": "ml"},
                "interval": "15s",
                "scrapeTimeout": "10s",
            },
        }
        monitor = render_service_monitor(OWNER, make_spec(metrics=metrics))
        assert monitor is not None
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["metadata"]["labels"]["app.kubernetes.io/instance"] == "llama"
        assert monitor["metadata"]["annotations"] == {"team": "ml"}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("15s", "10s")
