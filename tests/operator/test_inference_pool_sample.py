"""manifests/samples/inferencepool: the InferencePool selects the pods the operator renders, on
the port their server listens on, and the HTTPRoute sends to that pool.

The sample is for an Endpoint Picker run by hand (with expose.router.eppConfig the operator
renders its own InferencePool, tests/operator/test_render_endpoint_picker.py); this keeps the
hand-written sample from drifting from the pods the operator renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_children

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


def sample() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((SAMPLES / "inferencepool" / "smollm2.yaml").read_text())
    return {doc["kind"]: doc for doc in docs if doc}


def rendered_pod_template() -> dict[str, Any]:
    nimservice = yaml.safe_load((SAMPLES / "smollm2-cpu.yaml").read_text())
    owner = Owner(name=nimservice["metadata"]["name"], namespace="default", uid="uid-1")
    spec = NIMServiceSpec.from_body(nimservice["spec"])
    children = render_children(owner, spec, replicas=1, service_monitor_supported=False)
    (deployment,) = [m for ref, m in children if ref.kind == "Deployment" and m is not None]
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


def test_the_pool_selects_the_rendered_pods_on_the_servers_port() -> None:
    pool = sample()["InferencePool"]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    template = rendered_pod_template()
    assert pool["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    server = next(c for c in template["spec"]["containers"] if c["name"] == "nim")
    ports = {port["name"]: port["containerPort"] for port in server["ports"]}
    assert pool["spec"]["targetPorts"] == [{"number": ports["api"]}]
    assert pool["spec"]["endpointPickerRef"]["name"]


def test_the_route_sends_to_the_pool() -> None:
    docs = sample()
    (rule,) = docs["HTTPRoute"]["spec"]["rules"]
    assert rule["backendRefs"] == [
        {
            "group": "inference.networking.k8s.io",
            "kind": "InferencePool",
            "name": docs["InferencePool"]["metadata"]["name"],
        }
    ]
