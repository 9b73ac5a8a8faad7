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

COMPUTE_DOMAIN_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "computedomains.resource.nvidia.com"},
    "spec": {
        "group": "resource.nvidia.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ComputeDomain",
            "plural": "computedomains",
            "singular": "computedomain",
            "listKind": "ComputeDomainList",
        },
        "versions": [
            {
                "name": "v1beta1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": _SPEC_SCHEMA,
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
            }
        ],
    },
}
