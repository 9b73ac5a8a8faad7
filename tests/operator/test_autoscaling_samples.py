"""The autoscaling samples fit together: each names what the others define.

manifests/samples/*.yaml are NIMServices (checked against the CRD's CEL rules and the model in
test_crd_cel.py, rendered in test_render_children.py). The companions in
manifests/samples/autoscaling/ are for other controllers: prometheus-adapter's rule, a KEDA
ScaledObject and an HPA aimed at the NIMService. There is no cluster with those controllers
here, so these tests check what can break silently: that the rule turns the names our server
really exports into the metric the HPA sample asks for, that KEDA and the HPA point at a
NIMService sample through a scale subresource the CRD has, and that the objects are valid.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

from nim_operator import API_GROUP, API_VERSION, KIND
from nim_operator.models import NIMServiceSpec
from nim_server.metrics import ServerMetrics

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "manifests" / "samples"
COMPANIONS = SAMPLES / "autoscaling"
KUBERNETES_VERSION = "1.31"


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def server_metric_names() -> set[str]:
    """The metric families nim-serve exports at /v1/metrics (vLLM's gauges present)."""
    vllm = CollectorRegistry()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        Gauge(name, name, registry=vllm).set(1)
    text = ServerMetrics(source=vllm).render().decode()
    return {family.name for family in text_string_to_metric_families(text)}


@pytest.fixture(scope="module")
def adapter_rules() -> list[dict[str, Any]]:
    config = load(COMPANIONS / "prometheus-adapter-rules.yaml")
    rules: list[dict[str, Any]] = yaml.safe_load(config["data"]["config.yaml"])["rules"]
    return rules


def exposed_as(rule: dict[str, Any], series: str) -> str | None:
    """The custom-metrics name prometheus-adapter gives `series` under `rule` (None: no match)."""
    match = re.fullmatch(rule["name"]["matches"], series)
    if match is None:
        return None
    return re.sub(r"\$\{(\d+)\}", lambda m: match.group(int(m.group(1))), rule["name"]["as"])


class TestPrometheusAdapterRule:
    def test_is_a_valid_configmap(self) -> None:
        manifest = load(COMPANIONS / "prometheus-adapter-rules.yaml")
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)

    def test_serves_what_the_hpa_sample_asks_for(self, adapter_rules: list[dict[str, Any]]) -> None:
        hpa = load(SAMPLES / "llama-3.1-8b-hpa-queue.yaml")["spec"]["scale"]["hpa"]
        (metric,) = hpa["metrics"]
        wanted = metric["pods"]["metric"]["name"]
        assert wanted == "num_requests_waiting"
        exposed = {
            exposed_as(rule, series) for rule in adapter_rules for series in server_metric_names()
        }
        assert wanted in exposed
        assert "num_requests_running" in exposed  # what llama-3.1-8b-autoscaled.yaml uses

    def test_discovers_the_series_our_server_exports(
        self, adapter_rules: list[dict[str, Any]]
    ) -> None:
        (rule,) = adapter_rules
        selector = re.search(r'__name__=~"([^"]+)"', rule["seriesQuery"])
        assert selector is not None
        found = {name for name in server_metric_names() if re.fullmatch(selector.group(1), name)}
        assert found == {"num_requests_waiting", "num_requests_running"}
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}  # a Pods metric
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]


@pytest.fixture(scope="module")
def target() -> dict[str, Any]:
    """The NIMService that KEDA (or a hand-written HPA) scales."""
    return load(SAMPLES / "llama-3.1-8b-keda.yaml")


class TestScaleTargets:
    """KEDA and a hand-written HPA scale the NIMService itself through its scale subresource."""

    def test_the_crd_has_a_scale_subresource_with_a_selector(self) -> None:
        crd = load(REPO / "crds" / "nimservice.yaml")
        (version,) = crd["spec"]["versions"]
        assert version["subresources"]["scale"] == {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }

    def test_the_target_sets_replicas(self, target: dict[str, Any]) -> None:
        # The API server answers GET .../scale with 500 while spec.replicas is absent, and an
        # HPA or KEDA reads it before every write.
        spec = NIMServiceSpec.model_validate(target["spec"])
        assert spec.replicas is not None
        assert not spec.hpa_enabled()
        assert not spec.autoscaling_enabled()

    @pytest.mark.parametrize("companion", ["keda-scaledobject.yaml", "hpa-on-nimservice.yaml"])
    def test_points_at_the_nimservice(self, companion: str, target: dict[str, Any]) -> None:
        ref = load(COMPANIONS / companion)["spec"]["scaleTargetRef"]
        assert ref == {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "name": target["metadata"]["name"],
        }

    def test_the_hpa_is_valid(self) -> None:
        hpa = load(COMPANIONS / "hpa-on-nimservice.yaml")
        kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
        (metric,) = hpa["spec"]["metrics"]
        assert metric["pods"]["metric"]["name"] == "num_requests_waiting"

    def test_keda_queries_the_target_service(self, target: dict[str, Any]) -> None:
        scaled = load(COMPANIONS / "keda-scaledobject.yaml")
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        assert "num_requests_waiting" in server_metric_names()
        assert "num_requests_waiting{" in query
        # The ServiceMonitor scrapes through the Service named like the NIMService.
        assert f'service="{target["metadata"]["name"]}"' in query
        assert float(trigger["metadata"]["threshold"]) > 0
        assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
        assert target["spec"]["metrics"]["enabled"] is True  # the series exist only then


def test_the_built_in_sample_needs_nothing_else() -> None:
    sample = load(SAMPLES / "llama-3.1-8b-builtin-autoscaler.yaml")
    spec = NIMServiceSpec.model_validate(sample["spec"])
    assert spec.autoscaling is not None
    assert spec.replicas is None
    assert not spec.hpa_enabled()
    assert not spec.metrics_enabled()  # no Prometheus involved
    assert spec.autoscaling.effective_target() == 16
