"""The ComputeDomain CRD of NVIDIA's DRA driver for GPUs (resource.nvidia.com/v1beta1).

A real cluster serves ComputeDomains only where the driver (NVIDIA/k8s-dra-driver-gpu) is
installed; so does the emulator, once a test installs this CRD. Its spec schema follows the
driver's API type (api/nvidia.com/resource/v1beta1/computedomain.go): numNodes and channel are
required, the channel names the ResourceClaimTemplate the driver creates, allocationMode is
Single or All, and the spec is immutable. The status is left free-form: no driver runs here, a
test plays it by writing what it would.
"""

from __future__ import annotations

from typing import Any

from tests.support.third_party_crd import third_party_crd

__all__ = ["COMPUTE_DOMAIN_CRD"]

_SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["numNodes", "channel"],
    "x-kubernetes-validations": [
        {"rule": "self == oldSelf", "message": "A computeDomain.spec is immutable"}
    ],
    "properties": {
        "numNodes": {"type": "integer"},
        "channel": {
            "type": "object",
            "required": ["resourceClaimTemplate"],
            "properties": {
                "resourceClaimTemplate": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
                "allocationMode": {
                    "type": "string",
                    "default": "Single",
                    "enum": ["All", "Single"],
                },
            },
        },
    },
}

COMPUTE_DOMAIN_CRD: dict[str, Any] = third_party_crd(
    "resource.nvidia.com",
    "v1beta1",
    "ComputeDomain",
    "computedomains",
    list_kind="ComputeDomainList",
    schema={
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": _SPEC_SCHEMA,
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    },
)
