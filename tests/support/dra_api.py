"""Dynamic resource allocation's API (resource.k8s.io/v1), served by the emulator on request.

Kubernetes 1.34 serves resource.k8s.io/v1 as a built-in group; kmock's bundled resource list
predates it, so the emulator starts like a cluster without DRA (an older one, or one with the
API turned off). `serve_dra` turns it on, as a cluster upgrade would: discovery lists the kinds
from then on, and their objects are stored and typed against Kubernetes' own schemas like any
other built-in kind (kmock_schemas). `stop_serving_dra` undoes it, so that an emulator shared by
several tests is back to a cluster without DRA for the tests after.
"""

from __future__ import annotations

import kmock

from tests.support.kmock_apiserver import ApiServerEmulator

__all__ = ["DRA_GROUP", "DRA_VERSION", "serve_dra", "stop_serving_dra"]

DRA_GROUP = "resource.k8s.io"
DRA_VERSION = "v1"
# plural -> (kind, namespaced)
_KINDS = {
    "resourceclaims": ("ResourceClaim", True),
    "resourceclaimtemplates": ("ResourceClaimTemplate", True),
    "deviceclasses": ("DeviceClass", False),
    "resourceslices": ("ResourceSlice", False),
}


def serve_dra(emulator: ApiServerEmulator) -> None:
    for plural, (kind, namespaced) in _KINDS.items():
        emulator.resources[kmock.resource(DRA_GROUP, DRA_VERSION, plural)] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=namespaced,
            verbs={
                "get",
                "list",
                "watch",
                "create",
                "update",
                "patch",
                "delete",
                "deletecollection",
            },
        )


def stop_serving_dra(emulator: ApiServerEmulator) -> None:
    for plural in _KINDS:
        resource = kmock.resource(DRA_GROUP, DRA_VERSION, plural)
        if resource in emulator.resources:
            del emulator.resources[resource]
