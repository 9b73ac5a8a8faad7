"""Service `<name>` (or `expose.service.name`): the stable address of the API.

Port `api` targets the container's `api` port. `grpcPort` and `metricsPort` add the ports
`grpc` and `metrics`, each targeting the same number on the container: they are for images that
serve gRPC or a separate metrics endpoint there (NVIDIA's Triton-based NIMs); nim-server serves
neither, so nothing answers on them unless the image does (docs/operator-crd.md).
"""

from __future__ import annotations

from typing import Any

from nim_operator.models import NIMServiceSpec
from nim_operator.render.common import (
    API_PORT_NAME,
    GRPC_PORT_NAME,
    METRICS_PORT_NAME,
    Owner,
    object_meta,
)
from nim_operator.render.labels import child_labels, selector_labels, server_selector_labels

__all__ = ["render_service", "service_endpoint"]


def render_service(
    owner: Owner, spec: NIMServiceSpec, *, every_pod: bool = False
) -> dict[str, Any]:
    """The Service `<name>` (or expose.service.name).

    `every_pod` selects all of the NIMService's pods even with spec.multiNode: while a
    Deployment from before the switch still serves (nim_operator.multinode.workload_to_keep),
    its pods and the new group leaders both get requests. Workers do not: they have no `api`
    port, and a pod without the Service's named target port is not an endpoint of it.
    """
    exposed = spec.expose.service
    # Our labels win over `expose.service.labels` for the same reason they win over spec.labels.
    labels = {**(exposed.labels or {}), **child_labels(owner.name, spec)}
    ports: list[dict[str, Any]] = [
        {
            "name": API_PORT_NAME,
            "port": spec.service_port(),
            "targetPort": API_PORT_NAME,
            "protocol": "TCP",
        }
    ]
    for name, number in (
        (GRPC_PORT_NAME, exposed.grpc_port),
        (METRICS_PORT_NAME, exposed.metrics_port),
    ):
        if number is not None:
            ports.append({"name": name, "port": number, "targetPort": number, "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(
            owner, spec.service_name(owner.name), dict(sorted(labels.items())), exposed.annotations
        ),
        "spec": {
            "type": exposed.type,
            "selector": (
                selector_labels(owner.name)
                if every_pod
                else server_selector_labels(owner.name, spec)
            ),
            "ports": ports,
        },
    }


def service_endpoint(owner: Owner, spec: NIMServiceSpec) -> str:
    """In-cluster base URL of the API (append /v1 for OpenAI clients)."""
    service = spec.service_name(owner.name)
    return f"http://{service}.{owner.namespace}.svc.cluster.local:{spec.service_port()}"
