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
    "child_labels",
    "selector_labels",
]

FIELD_MANAGER = "nimstack-operator"
APP_NAME = "nim-service"
PART_OF = "nimstack"

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select the pods of the NIMService `name` (Deployment, Service, PDB, ...)."""
    return {INSTANCE_LABEL: name, NAME_LABEL: APP_NAME}


def child_labels(name: str, spec: NIMServiceSpec) -> dict[str, str]:
    """Labels for every child and the pod template: the user's `spec.labels` plus ours.

    Ours win on conflict, because a user label overriding the selector would orphan the pods.
    """
    labels = dict(spec.labels or {})
    labels.update(selector_labels(name))
    labels[MANAGED_BY_LABEL] = FIELD_MANAGER
    labels[PART_OF_LABEL] = PART_OF
    return dict(sorted(labels.items()))
