"""ComputeDomain `<name>` (resource.nvidia.com/v1beta1) and the pods' claims on its channel.

NVIDIA's multiNode.computeDomain puts the pods of a multi-node NIMService in a ComputeDomain of
NVIDIA's DRA driver (k8s-dra-driver-gpu): a Multi-Node NVLink domain, whose IMEX daemons the
driver starts on the nodes where the pods land. The driver creates the domain's channel
ResourceClaimTemplate under the name the ComputeDomain gives it; a pod that claims from that
template gets an IMEX channel and can share GPU memory over NVLink with the others.

* `create: true`: the operator renders a ComputeDomain named after the NIMService (owned by it,
  so deleted with it), whose channel template is `<name>-compute-domain-channel`.
* `name`: an existing ComputeDomain; its channel's template name is read from it by reconcile
  (nim_operator.compute_domain) and handed to the LeaderWorkerSet's renderer.

Every pod of every group (leaders and workers) gets the pod claim `compute-domain-channel` on
that template, and its server container claims it (the other containers do not use NVLink).
"""

from __future__ import annotations

from typing import Any

from nim_operator.models import NIMServiceSpec
from nim_operator.render.common import Owner, object_meta
from nim_operator.render.labels import child_labels

__all__ = [
    "COMPUTE_DOMAIN_API_VERSION",
    "COMPUTE_DOMAIN_POD_CLAIM",
    "add_channel_claim",
    "created_channel_template",
    "render_compute_domain",
]

COMPUTE_DOMAIN_API_VERSION = "resource.nvidia.com/v1beta1"
# The pod claim's name (a DNS label); draResources' claims are `dra-<i>`, so it cannot clash.
COMPUTE_DOMAIN_POD_CLAIM = "compute-domain-channel"
# One IMEX channel per pod, as NVIDIA's operator asks (`All` would take every channel).
CHANNEL_ALLOCATION_MODE = "Single"


def created_channel_template(owner_name: str) -> str:
    """The channel ResourceClaimTemplate of the ComputeDomain created for `owner_name`."""
    return f"{owner_name}-compute-domain-channel"


def render_compute_domain(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    """The ComputeDomain `<name>` with multiNode.computeDomain.create, else None (delete it)."""
    multi_node = spec.multi_node
    domain = multi_node.compute_domain if multi_node is not None else None
    if domain is None or not domain.create:
        return None
    labels = child_labels(owner.name, spec)
    return {
        "apiVersion": COMPUTE_DOMAIN_API_VERSION,
        "kind": "ComputeDomain",
        "metadata": object_meta(owner, owner.name, labels, spec.annotations),
        "spec": {
            # 0, not the node count: a ComputeDomain's spec is immutable, and the node count
            # changes with parallelism.pipeline and replicas. The DRA driver no longer waits for
            # it (IMEX daemons start as pods land), uses it only for the domain's status, and
            # deprecates it; its documentation says to leave it at 0.
            "numNodes": 0,
            "channel": {
                "resourceClaimTemplate": {"name": created_channel_template(owner.name)},
                "allocationMode": CHANNEL_ALLOCATION_MODE,
            },
        },
    }


def add_channel_claim(pod: dict[str, Any], server_name: str, template: str) -> None:
    """Claim the ComputeDomain's channel in `pod`, for its container `server_name`."""
    claims = [c for c in pod.get("resourceClaims") or [] if c["name"] != COMPUTE_DOMAIN_POD_CLAIM]
    claims.append({"name": COMPUTE_DOMAIN_POD_CLAIM, "resourceClaimTemplateName": template})
    pod["resourceClaims"] = claims
    containers = []
    for container in pod["containers"]:
        if container["name"] == server_name:
            container = dict(container)
            resources = dict(container.get("resources") or {})
            used = resources.get("claims") or []
            kept = [c for c in used if c["name"] != COMPUTE_DOMAIN_POD_CLAIM]
            resources["claims"] = [*kept, {"name": COMPUTE_DOMAIN_POD_CLAIM}]
            container["resources"] = resources
        containers.append(container)
    pod["containers"] = containers
