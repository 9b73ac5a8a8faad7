"""HorizontalPodAutoscaler (autoscaling/v2) `<name>` scaling the Deployment, when scale.enabled."""

from __future__ import annotations

import json
from typing import Any

from nim_operator.models import NIMServiceSpec
from nim_operator.render.common import Owner, object_meta
from nim_operator.render.labels import child_labels

__all__ = ["render_hpa"]


def _canonical(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True)


def render_hpa(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    hpa = spec.scale.hpa
    if not spec.hpa_enabled() or hpa is None:
        return None
    hpa_spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name},
        "minReplicas": hpa.min_replicas,
        "maxReplicas": hpa.max_replicas,
    }
    if hpa.metrics:
        # The HPA's order means nothing, but a different order is a diff: sort so that the same
        # spec always renders the same object and reconcile never patches back and forth.
        hpa_spec["metrics"] = sorted((m.to_k8s() for m in hpa.metrics), key=_canonical)
    if hpa.behavior is not None:
        hpa_spec["behavior"] = hpa.behavior.to_k8s()
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_meta(
            owner, owner.name, child_labels(owner.name, spec), spec.scale.annotations
        ),
        "spec": hpa_spec,
    }
