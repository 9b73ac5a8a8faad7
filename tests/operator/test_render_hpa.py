"""render_hpa: the autoscaler, deterministic so reconcile never flaps."""

from __future__ import annotations

import random
from typing import Any

import kubernetes_validate

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_hpa

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")
METRICS: list[dict[str, Any]] = [
    {
        "type": "Pods",
        "pods": {
            "metric": {"name": "num_requests_running"},
            "target": {"type": "AverageValue", "averageValue": "16"},
        },
    },
    {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
    },
    {
        "type": "External",
        "external": {
            "metric": {
                "name": "queue_depth",
                "selector": {"matchLabels": {"queue": "llama"}},
            },
            "target": {"type": "Value", "value": 100},
        },
    },
    {
        "type": "Object",
        "object": {
            "describedObject": {"apiVersion": "v1", "kind": "Service", "name": "llama"},
            "metric": {"name": "requests_per_second"},
            "target": {"type": "Value", "value": "2k"},
        },
    },
    {
        "type": "ContainerResource",
        "containerResource": {
            "name": "memory",
            "container": "nim",
            "target": {"type": "AverageValue", "averageValue": "30Gi"},
        },
    },
]


def make_spec(**fields: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate({"image": {"repository": "nim", "tag": "1"}, **fields})


def autoscaled(metrics: list[dict[str, Any]] | None = None, **hpa: Any) -> NIMServiceSpec:
    settings: dict[str, Any] = {"minReplicas": 1, "maxReplicas": 4, **hpa}
    if metrics is not None:
        settings["metrics"] = metrics
    return make_spec(scale={"enabled": True, "hpa": settings, "annotations": {"team": "ml"}})


class TestRenderHPA:
    def test_absent_unless_enabled(self) -> None:
        assert render_hpa(OWNER, make_spec()) is None
        assert render_hpa(OWNER, make_spec(scale={"enabled": False})) is None

    def test_targets_the_deployment(self) -> None:
        hpa = render_hpa(
            OWNER, autoscaled(behavior={"scaleDown": {"stabilizationWindowSeconds": 600}})
        )
        assert hpa is not None
        assert (hpa["apiVersion"], hpa["kind"]) == ("autoscaling/v2", "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "llama",
        }
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
        assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 600}}
        assert hpa["metadata"]["annotations"] == {"team": "ml"}
        assert "metrics" not in hpa["spec"]

    def test_every_metric_kind_validates(self) -> None:
        hpa = render_hpa(OWNER, autoscaled(METRICS))
        assert hpa is not None
        assert len(hpa["spec"]["metrics"]) == len(METRICS)
        kubernetes_validate.validate(hpa, "1.31", strict=True)

    def test_metric_order_does_not_change_the_render(self) -> None:
        reference = render_hpa(OWNER, autoscaled(METRICS))
        shuffled = list(METRICS)
        for seed in range(5):
            random.Random(seed).shuffle(shuffled)
            assert render_hpa(OWNER, autoscaled(shuffled)) == reference
