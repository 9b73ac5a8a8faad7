"""Names and labels shared by every child of a NIMService.

The selector is only the CR's instance label plus a constant name: a Deployment selector is
immutable, so it must never depend on anything the user can edit (model, image, spec labels).
"""

from __future__ import annotations

from nim_operator.models import NIMServiceSpec

__all__ = [
    "APP_NAME",
    "FIELD_MANAGER",
    "INSTANCE_LABEL",
    "MANAGED_BY_LABEL",
    "NAME_LABEL",
    "PART_OF_LABEL",
    "ROLE_LABEL",
    "child_labels",
    "selector_labels",
    "server_selector_labels",
]

FIELD_MANAGER = "nimstack-operator"
APP_NAME = "nim-service"
PART_OF = "nimstack"

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"
# NVIDIA's label for a multi-node pod's role (leader or worker); only leaders run the server.
ROLE_LABEL = "nim-llm-role"


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select the pods of the NIMService `name` (Deployment, Service, PDB, ...)."""
    return {INSTANCE_LABEL: name, NAME_LABEL: APP_NAME}


def server_selector_labels(name: str, spec: NIMServiceSpec) -> dict[str, str]:
    """The pods that serve the API: all of them, or with spec.multiNode the group leaders."""
    selector = selector_labels(name)
    if spec.multi_node is not None:
        selector[ROLE_LABEL] = "leader"
    return selector


def child_labels(name: str, spec: NIMServiceSpec) -> dict[str, str]:
    """Labels for every child and the pod template: the user's `spec.labels` plus ours.

    Ours win on conflict, because a user label overriding the selector would orphan the pods.
    """
    labels = dict(spec.labels or {})
    labels.update(selector_labels(name))
    labels[MANAGED_BY_LABEL] = FIELD_MANAGER
    labels[PART_OF_LABEL] = PART_OF
    return dict(sorted(labels.items()))
