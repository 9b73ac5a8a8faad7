"""ServiceAccount `<name>`: a per-service identity (e.g. for cloud workload identity), no token."""

from __future__ import annotations

from typing import Any

from nim_operator.models import NIMServiceSpec
from nim_operator.render.common import Owner, object_meta
from nim_operator.render.labels import child_labels

__all__ = ["render_service_account"]


def render_service_account(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": object_meta(owner, owner.name, child_labels(owner.name, spec)),
        "automountServiceAccountToken": False,
    }
