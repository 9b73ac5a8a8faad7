"""The owner being rendered, the identity of each child, and metadata every child shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nim_operator import API_GROUP, API_VERSION, KIND

__all__ = [
    "API_PORT_NAME",
    "GRPC_PORT_NAME",
    "METRICS_PORT_NAME",
    "ChildRef",
    "Owner",
    "object_meta",
]

# The container port and Service port are both named `api`; probes, the Service's targetPort and
# the ServiceMonitor refer to the name, so the number can change in one place.
API_PORT_NAME = "api"
# Service ports added by expose.service.grpcPort and .metricsPort (NVIDIA's names).
GRPC_PORT_NAME = "grpc"
METRICS_PORT_NAME = "metrics"


@dataclass(frozen=True)
class Owner:
    """The NIMService being rendered."""

    name: str
    namespace: str
    uid: str
    kind: str = KIND  # a NIMCache's children have the same kind of owner

    def reference(self) -> dict[str, Any]:
        """ownerReference making the owner the controller: deletion cascades to the child."""
        return {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class ChildRef:
    """Which object a rendered manifest is (or, when the manifest is None, which must not exist)."""

    api_version: str
    kind: str
    plural: str
    name: str


def object_meta(
    owner: Owner,
    name: str,
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
    *,
    owned: bool = True,
) -> dict[str, Any]:
    """metadata for a child in the owner's namespace; empty annotations are left out."""
    meta: dict[str, Any] = {"name": name, "namespace": owner.namespace, "labels": labels}
    if annotations:
        meta["annotations"] = dict(sorted(annotations.items()))
    if owned:
        meta["ownerReferences"] = [owner.reference()]
    return meta
