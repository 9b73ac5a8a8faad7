"""NIMServiceSpec / NIMServiceStatus: parsing, helpers, and what they refuse."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from nim_operator.models import NIMServiceSpec, NIMServiceStatus, service_name_problem

IMAGE = {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.3.3"}


def make_spec(**fields: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate({"image": IMAGE, **fields})


class TestSpecParsing:
    def test_defaults(self) -> None:
        spec = make_spec()
        assert spec.service_port() == 8000
        assert spec.expose.service.type == "ClusterIP"
        assert (spec.user_id, spec.group_id) == (1000, 2000)
        assert spec.liveness_probe.enabled
        assert spec.startup_probe.enabled
        assert not spec.scale.enabled
        assert not spec.metrics.enabled
        assert spec.shutdown_timeout_seconds == 30

    def test_wire_names_are_nvidias(self) -> None:
        spec = make_spec(userID=1001, groupID=3000, authSecret="s", runtimeClassName="nvidia")
        dumped = spec.to_k8s()
        assert (dumped["userID"], dumped["groupID"]) == (1001, 3000)
        assert (dumped["authSecret"], dumped["runtimeClassName"]) == ("s", "nvidia")
        assert NIMServiceSpec.model_validate(dumped) == spec

    def test_from_body(self) -> None:
        assert NIMServiceSpec.from_body({"image": IMAGE}) == make_spec()

    @pytest.mark.parametrize(
        "fields",
        [
            {"unknownField": 1},
            {"expose": {"router": {"hostname": "llama.example.com"}}},
            {"image": {**IMAGE, "digest": "sha256:abc"}},
            {"replicas": -1},
            {"expose": {"service": {"port": 70000}}},
            {"scale": {"enabled": True, "hpa": {"minReplicas": 0, "maxReplicas": 1}}},
            {"storage": {"pvc": {"create": True, "size": "fifty gigs"}}},
            {"metrics": {"enabled": True, "serviceMonitor": {"interval": "soon"}}},
            {"storage": {"hostPath": "relative/path"}},
            {"userID": 0},
            {"resources": {"limits": {"nvidia.com/gpu": "500m"}}},
        ],
    )
    def test_rejects(self, fields: dict[str, Any]) -> None:
        with pytest.raises(ValidationError):
            make_spec(**fields)

    def test_image_is_required(self) -> None:
        with pytest.raises(ValidationError, match="image"):
            NIMServiceSpec.model_validate({})

    def test_frozen(self) -> None:
        with pytest.raises(ValidationError):
            make_spec().replicas = 3  # type: ignore[misc]


class TestSpecHelpers:
    @pytest.mark.parametrize(
        ("fields", "desired", "ceiling"),
        [
            ({}, 1, 1),
            ({"replicas": 0}, 0, 0),
            ({"replicas": 3}, 3, 3),
            ({"scale": {"enabled": True, "hpa": {"minReplicas": 2, "maxReplicas": 5}}}, None, 5),
            ({"scale": {"enabled": False, "hpa": {"maxReplicas": 5}}}, 1, 1),
            ({"autoscaling": {"minReplicas": 2, "maxReplicas": 6}}, None, 6),
        ],
    )
    def test_replicas(self, fields: dict[str, Any], desired: int | None, ceiling: int) -> None:
        spec = make_spec(**fields)
        assert spec.desired_replicas() == desired
        assert (spec.hpa_enabled() or spec.autoscaling_enabled()) is (desired is None)
        assert spec.max_possible_replicas() == ceiling

    @pytest.mark.parametrize(
        ("metric", "target", "effective"),
        [("queue", None, 4.0), ("running", None, 16.0), ("kvCache", None, 0.75), ("queue", 2, 2)],
    )
    def test_autoscaling_target_defaults_per_metric(
        self, metric: str, target: float | None, effective: float
    ) -> None:
        spec = make_spec(autoscaling={"maxReplicas": 3, "metric": metric, "target": target})
        assert spec.autoscaling is not None
        assert spec.autoscaling.effective_target() == effective

    @pytest.mark.parametrize(
        ("fields", "count"),
        [
            ({}, 1),
            ({"gpu": {"count": 0}}, 0),
            ({"gpu": {"count": 8}}, 8),
            ({"resources": {"limits": {"nvidia.com/gpu": 2}}}, 2),
            ({"resources": {"limits": {"nvidia.com/gpu": "4"}}}, 4),
        ],
    )
    def test_gpu_count(self, fields: dict[str, Any], count: int) -> None:
        assert make_spec(**fields).gpu_count() == count

    def test_served_model_name(self) -> None:
        assert make_spec().served_model_name("llama") == "llama"
        spec = make_spec(model={"servedName": "meta/llama-3.1-8b-instruct"})
        assert spec.served_model_name("llama") == "meta/llama-3.1-8b-instruct"

    def test_service_port_and_metrics(self) -> None:
        spec = make_spec(expose={"service": {"port": 9000}}, metrics={"enabled": True})
        assert spec.service_port() == 9000
        assert spec.metrics_enabled()


class TestServiceName:
    @pytest.mark.parametrize("name", ["llama", "a", "llama-3-1-8b", "x" * 63])
    def test_good(self, name: str) -> None:
        assert service_name_problem(name) is None

    @pytest.mark.parametrize("name", ["3llama", "Llama", "llama.v1", "llama-", "x" * 64, ""])
    def test_bad(self, name: str) -> None:
        problem = service_name_problem(name)
        assert problem is not None
        assert "DNS-1035" in problem


class TestStatus:
    def test_round_trip(self) -> None:
        body = {
            "observedGeneration": 3,
            "replicas": 2,
            "readyReplicas": 1,
            "availableReplicas": 1,
            "selector": "app.kubernetes.io/instance=llama,app.kubernetes.io/name=nim-service",
            "endpoint": "http://llama.models.svc.cluster.local:8000",
            "model": {
                "name": "llama",
                "clusterEndpoint": "http://llama.models.svc.cluster.local:8000",
            },
            "state": "NotReady",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "InsufficientGPU",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                    "observedGeneration": 3,
                }
            ],
            "autoscaling": {
                "metric": "queue",
                "target": 4.0,
                "currentMetric": 6.5,
                "currentReplicas": 2,
                "desiredReplicas": 3,
                "lastScaleTime": "2025-01-01T00:00:10Z",
                "reason": "ScaleUp",
                "message": "6.5 waiting requests per pod on 2 pod(s), target 4",
                "history": [
                    {
                        "time": "2025-01-01T00:00:10Z",
                        "from": 2,
                        "to": 3,
                        "metric": "queue",
                        "value": 6.5,
                        "reason": "ScaleUp",
                    }
                ],
            },
        }
        status = NIMServiceStatus.model_validate(body)
        assert status.conditions is not None
        assert status.conditions[0].reason == "InsufficientGPU"
        assert status.to_k8s() == body

    @pytest.mark.parametrize(
        "condition",
        [
            {"status": "Maybe"},
            {"reason": "not camel case"},
            {"reason": ""},
        ],
    )
    def test_condition_shape(self, condition: dict[str, Any]) -> None:
        good = {
            "type": "Ready",
            "status": "True",
            "reason": "Ready",
            "message": "",
            "lastTransitionTime": "2025-01-01T00:00:00Z",
        }
        with pytest.raises(ValidationError):
            NIMServiceStatus.model_validate({"conditions": [{**good, **condition}]})

    def test_state_values(self) -> None:
        with pytest.raises(ValidationError):
            NIMServiceStatus.model_validate({"state": "Running"})
