"""multiNode.ray and NVIDIA's earlier multiNode.size / multiNode.gpusPerPod in the CRD.

The CRD's schema and CEL rules (evaluated with cel-python after the API server's defaulting,
as tests/operator/test_crd_cel.py does) and NIMServiceSpec must agree: what one refuses the
other refuses with the same message, and NVIDIA's shapes pass both.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from pydantic import ValidationError

from nim_operator.models import (
    MULTI_NODE_GPU_MISMATCH,
    MULTI_NODE_GPUS_PER_POD_CONFLICT,
    MULTI_NODE_MPI_OR_RAY,
    MULTI_NODE_RAY_PORT_TAKEN,
    MULTI_NODE_SIZE_CONFLICT,
    NIMServiceSpec,
)
from tests.operator.test_crd_cel import apply_defaults, cel_violations, nimservice, openapi_root
from tests.support.crd_validation import schema_errors

# Accepted by NVIDIA's CRDs: the newest (parallelism, ray) and the one before parallelism.
ACCEPTED = {
    "ray with its port": {"parallelism": {"pipeline": 2, "tensor": 8}, "ray": {"rayPort": 6380}},
    "ray with the default port": {"parallelism": {"pipeline": 2}, "ray": {}},
    "mpi": {"parallelism": {"pipeline": 2}, "mpi": {"mpiStartTimeout": 600}},
    "size and gpusPerPod": {"size": 2, "gpusPerPod": 8, "mpi": {"mpiStartTimeout": 300}},
    "size alone": {"size": 3},
    "both shapes, the same numbers": {
        "size": 2,
        "gpusPerPod": 8,
        "parallelism": {"pipeline": 2, "tensor": 8},
    },
    "old and new halves": {"size": 2, "parallelism": {"tensor": 8}},
    "neither (a group of one)": {"backendType": "lws"},
}

REFUSED = {
    "mpi and ray": ({"parallelism": {}, "mpi": {}, "ray": {}}, MULTI_NODE_MPI_OR_RAY),
    "size differs from pipeline": (
        {"size": 3, "parallelism": {"pipeline": 2}},
        MULTI_NODE_SIZE_CONFLICT,
    ),
    "gpusPerPod differs from tensor": (
        {"gpusPerPod": 4, "parallelism": {"tensor": 8}},
        MULTI_NODE_GPUS_PER_POD_CONFLICT,
    ),
}


def _first_line(message: str) -> str:
    # The CRD folds its messages over lines; the model's are one string: compare the start.
    return message[:60]


@pytest.mark.parametrize("multi_node", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_nvidias_shapes_pass_the_schema_cel_and_the_model(multi_node: dict[str, Any]) -> None:
    obj = nimservice(multiNode=multi_node)
    defaulted = apply_defaults(openapi_root(), copy.deepcopy(obj))
    assert schema_errors(openapi_root(), defaulted, strict=True) == []
    assert cel_violations(obj) == []
    NIMServiceSpec.model_validate(defaulted["spec"])


def test_ray_port_defaults_to_6379() -> None:
    defaulted = apply_defaults(openapi_root(), nimservice(multiNode={"ray": {}}))
    assert defaulted["spec"]["multiNode"]["ray"] == {"rayPort": 6379}
    spec = NIMServiceSpec.model_validate(defaulted["spec"])
    assert spec.multi_node is not None
    assert spec.multi_node.ray_port() == 6379


@pytest.mark.parametrize(("multi_node", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_cel_and_model_refuse_with_the_same_message(
    multi_node: dict[str, Any], message: str
) -> None:
    violations = cel_violations(nimservice(multiNode=multi_node))
    assert any(_first_line(message) in " ".join(v.split()) for v in violations), violations
    with pytest.raises(ValidationError, match=re.escape(message)):
        NIMServiceSpec.model_validate(nimservice(multiNode=multi_node)["spec"])


@pytest.mark.parametrize(
    "multi_node",
    [{"ray": {"rayPort": 0}}, {"ray": {"rayPort": 65536}}, {"size": 0}, {"gpusPerPod": 0}],
)
def test_out_of_range_numbers_are_refused_by_schema_and_model(multi_node: dict[str, Any]) -> None:
    obj = apply_defaults(openapi_root(), nimservice(multiNode=multi_node))
    assert schema_errors(openapi_root(), obj, strict=True) != []
    with pytest.raises(ValidationError):
        NIMServiceSpec.model_validate(obj["spec"])


def test_gpus_per_pod_is_the_gpu_count_gpu_count_must_match() -> None:
    obj = nimservice(multiNode={"gpusPerPod": 4}, gpu={"count": 8})
    violations = cel_violations(obj)
    assert any(_first_line(MULTI_NODE_GPU_MISMATCH) in " ".join(v.split()) for v in violations)
    with pytest.raises(ValidationError, match=re.escape(MULTI_NODE_GPU_MISMATCH)):
        NIMServiceSpec.model_validate(obj["spec"])
    assert cel_violations(nimservice(multiNode={"gpusPerPod": 4}, gpu={"count": 4})) == []


@pytest.mark.parametrize(
    "spec",
    [
        {"multiNode": {"ray": {"rayPort": 8000}}},
        {"multiNode": {"ray": {"rayPort": 9000}}, "expose": {"service": {"port": 9000}}},
        {"multiNode": {"ray": {"rayPort": 9000}}, "expose": {"service": {"openaiPort": 9000}}},
        {"multiNode": {"ray": {}}, "expose": {"service": {"grpcPort": 6379}}},
        {"multiNode": {"ray": {}}, "expose": {"service": {"metricsPort": 6379}}},
    ],
)
def test_the_ray_port_cannot_be_one_the_server_uses(spec: dict[str, Any]) -> None:
    # NVIDIA's CRD lets it through; the Ray head and the server would fight over the port.
    violations = cel_violations(nimservice(**spec))
    assert any(_first_line(MULTI_NODE_RAY_PORT_TAKEN) in " ".join(v.split()) for v in violations)
    defaulted = apply_defaults(openapi_root(), nimservice(**spec))
    with pytest.raises(ValidationError, match=re.escape(MULTI_NODE_RAY_PORT_TAKEN)):
        NIMServiceSpec.model_validate(defaulted["spec"])


def test_a_ray_port_beside_the_servers_ports_passes() -> None:
    obj = nimservice(multiNode={"ray": {}}, expose={"service": {"port": 8080, "grpcPort": 8001}})
    assert cel_violations(obj) == []
