"""PersistentVolumeClaim for the model cache, when `storage.pvc.create` is set.

By default (`retainPolicy: Delete`, NVIDIA's behaviour) the claim is owned by the NIMService and
deleted with it. With `retainPolicy: Retain` it has no ownerReference: deleting the NIMService
keeps the downloaded weights, and a new NIMService can mount them by name.
"""

from __future__ import annotations

from typing import Any

from nim_operator.models import NIMServiceSpec
from nim_operator.render.common import Owner, object_meta
from nim_operator.render.labels import child_labels

__all__ = ["default_pvc_name", "pvc_name", "render_pvc"]


def default_pvc_name(owner_name: str) -> str:
    return f"{owner_name}-pvc"


def pvc_name(owner_name: str, spec: NIMServiceSpec) -> str:
    """The claim mounted as the model store: `storage.pvc.name`, else `<name>-pvc`."""
    pvc = spec.storage.pvc
    if pvc is not None and pvc.name:
        return pvc.name
    return default_pvc_name(owner_name)


def render_pvc(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    pvc = spec.storage.pvc
    if pvc is None or not pvc.create or pvc.size is None:
        return None
    claim_spec: dict[str, Any] = {
        "accessModes": [pvc.volume_access_mode],
        "resources": {"requests": {"storage": pvc.size}},
    }
    if pvc.storage_class:
        claim_spec["storageClassName"] = pvc.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": object_meta(
            owner,
            pvc_name(owner.name, spec),
            child_labels(owner.name, spec),
            pvc.annotations,
            owned=pvc.retain_policy == "Delete",
        ),
        "spec": claim_spec,
    }
