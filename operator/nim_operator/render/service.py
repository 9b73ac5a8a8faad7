"""Service `<name>`: the stable address of the API, port `api` -> the container's `api` port."""

from __future__ import annotations

from typing import Any

from nim_operator.models import NIMServiceSpec
from nim_operator.render.common import API_PORT_NAME, Owner, object_meta
from nim_operator.render.labels import child_labels, selector_labels

__all__ = ["render_service", "service_endpoint"]


def render_service(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any]:
    exposed = spec.expose.service
    # Our labels win over `expose.service.labels` for the same reason they win over spec.labels.
    labels = {**(exposed.labels or {}), **child_labels(owner.name, spec)}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(
            owner, owner.name, dict(sorted(labels.items())), exposed.annotations
        ),
        "spec": {
            "type": exposed.type,
            "selector": selector_labels(owner.name),
            "ports": [
                {
                    "name": API_PORT_NAME,
                    "port": exposed.port,
                    "targetPort": API_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def service_endpoint(owner: Owner, spec: NIMServiceSpec) -> str:
    """In-cluster base URL of the API (append /v1 for OpenAI clients)."""
    return f"http://{owner.name}.{owner.namespace}.svc.cluster.local:{spec.service_port()}"
