"""InferencePool `<name>` (inference.networking.k8s.io/v1), from expose.router.eppConfig.

The Gateway API Inference Extension's pool: the NIMService's serving pods (the group leaders
with spec.multiNode), on the server's container port, and the endpoint picker that chooses
among them for each request (the Service `<name>-epp`, nim_operator.render.endpoint_picker).
A Gateway reaches it through an HTTPRoute whose backendRef names this InferencePool.
"""

from __future__ import annotations

from typing import Any

from nim_operator.models import NIMServiceSpec
from nim_operator.render.common import Owner, object_meta
from nim_operator.render.container_env import container_port
from nim_operator.render.endpoint_picker import endpoint_picker_name, ext_proc_port
from nim_operator.render.labels import child_labels, server_selector_labels

__all__ = ["INFERENCE_POOL_API_VERSION", "render_inference_pool"]

INFERENCE_POOL_API_VERSION = "inference.networking.k8s.io/v1"


def render_inference_pool(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    epp = spec.expose.router.epp_config if spec.expose.router is not None else None
    if epp is None:
        return None
    picker = {
        # group "" / kind Service and FailClose are the API's defaults, written out so that the
        # applied object and the stored one are the same.
        "group": "",
        "kind": "Service",
        "name": endpoint_picker_name(owner.name),
        "port": {"number": ext_proc_port(epp)},
        "failureMode": "FailClose",
    }
    return {
        "apiVersion": INFERENCE_POOL_API_VERSION,
        "kind": "InferencePool",
        "metadata": object_meta(owner, owner.name, child_labels(owner.name, spec)),
        "spec": {
            "selector": {"matchLabels": server_selector_labels(owner.name, spec)},
            "targetPorts": [{"number": container_port(spec)}],
            "endpointPickerRef": picker,
        },
    }
