"""The scale-to-zero fields in the CRD (schema bounds and CEL) and in the model agree.

autoscaling.minReplicas may be 0 (with autoscaling.scaleToZeroAfter); a fixed count scales to
zero with spec.scaleToZeroAfter, which neither the built-in autoscaler nor an HPA may be combined
with. Same machinery as test_crd_cel: the real CEL rules after the API server's defaulting.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from pydantic import ValidationError

from nim_operator.models import NIMServiceSpec
from tests.operator.test_crd_cel import apply_defaults, cel_violations, nimservice, openapi_root

EXCLUSIVE = "spec.scaleToZeroAfter is for a fixed replica count"


def schema(*path: str) -> dict[str, Any]:
    node = openapi_root()["properties"]["spec"]
    for part in path:
        node = node["properties"][part]
    return node


@pytest.mark.parametrize(
    "spec",
    [
        {"autoscaling": {"minReplicas": 0, "maxReplicas": 3}},
        {"autoscaling": {"minReplicas": 0, "maxReplicas": 1, "scaleToZeroAfter": 30}},
        {"replicas": 0, "scaleToZeroAfter": 600},
        {"replicas": 2, "scaleToZeroAfter": 1},
        {"scaleToZeroAfter": 86400},
        {"scaleToZeroAfter": 60, "scale": {"enabled": False, "hpa": {"maxReplicas": 3}}},
    ],
)
def test_valid_specs_pass_both_and_mean_the_same(spec: dict[str, Any]) -> None:
    obj = nimservice(**spec)
    assert cel_violations(obj) == []
    stored = apply_defaults(openapi_root(), copy.deepcopy(obj))
    parsed = NIMServiceSpec.model_validate(stored["spec"])
    assert parsed == NIMServiceSpec.model_validate(obj["spec"])


def test_what_each_spec_means() -> None:
    autoscaled = NIMServiceSpec.model_validate(
        nimservice(autoscaling={"minReplicas": 0, "maxReplicas": 3})["spec"]
    )
    assert autoscaled.idle_timeout() == 300  # the default
    assert autoscaled.desired_replicas() is None  # the autoscaler owns the count
    fixed = NIMServiceSpec.model_validate(nimservice(replicas=0, scaleToZeroAfter=90)["spec"])
    assert (fixed.idle_timeout(), fixed.desired_replicas()) == (90, 0)
    # minReplicas above 0 never scales to zero, whatever scaleToZeroAfter says.
    floor = NIMServiceSpec.model_validate(
        nimservice(autoscaling={"minReplicas": 1, "maxReplicas": 3, "scaleToZeroAfter": 5})["spec"]
    )
    assert floor.idle_timeout() is None
    assert NIMServiceSpec.model_validate(nimservice(replicas=0)["spec"]).idle_timeout() is None


@pytest.mark.parametrize(
    "spec",
    [
        {"autoscaling": {"maxReplicas": 3}, "scaleToZeroAfter": 60},
        {"scale": {"enabled": True, "hpa": {"maxReplicas": 3}}, "scaleToZeroAfter": 60},
    ],
)
def test_an_idle_timeout_beside_an_autoscaler_is_refused_by_both(spec: dict[str, Any]) -> None:
    violations = cel_violations(nimservice(**spec))
    assert any(EXCLUSIVE in violation for violation in violations), violations
    with pytest.raises(ValidationError, match=re.escape(EXCLUSIVE)):
        NIMServiceSpec.model_validate(nimservice(**spec)["spec"])


def test_a_multi_node_group_does_not_scale_to_zero() -> None:
    """The operator measures idleness on a Deployment's pods; a LeaderWorkerSet has none."""
    spec = {"replicas": 1, "scaleToZeroAfter": 60, "multiNode": {"parallelism": {"tensor": 2}}}
    message = "spec.scaleToZeroAfter cannot be combined with spec.multiNode"
    violations = cel_violations(nimservice(**spec))
    assert any(message in violation for violation in violations), violations
    with pytest.raises(ValidationError, match=re.escape(message)):
        NIMServiceSpec.model_validate(nimservice(**spec)["spec"])


@pytest.mark.parametrize(
    ("path", "low", "high"),
    [
        (("scaleToZeroAfter",), 1, 86400),
        (("autoscaling", "scaleToZeroAfter"), 1, 86400),
    ],
)
def test_bounds_are_the_models(path: tuple[str, ...], low: int, high: int) -> None:
    node = schema(*path)
    assert (node["type"], node["minimum"], node["maximum"]) == ("integer", low, high)
    for value in (low - 1, high + 1):
        spec: dict[str, Any] = {"replicas": 1, path[0]: value}
        if len(path) == 2:
            spec = {path[0]: {"maxReplicas": 2, "minReplicas": 0, path[1]: value}}
        with pytest.raises(ValidationError):
            NIMServiceSpec.model_validate(nimservice(**spec)["spec"])


def test_min_replicas_may_be_zero_but_not_negative() -> None:
    node = schema("autoscaling", "minReplicas")
    assert node["minimum"] == 0
    assert schema("autoscaling", "maxReplicas")["minimum"] == 1
    with pytest.raises(ValidationError):
        NIMServiceSpec.model_validate(
            nimservice(autoscaling={"minReplicas": -1, "maxReplicas": 2})["spec"]
        )
    with pytest.raises(ValidationError):
        NIMServiceSpec.model_validate(
            nimservice(autoscaling={"minReplicas": 0, "maxReplicas": 0})["spec"]
        )
