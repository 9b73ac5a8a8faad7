"""Dynamic resource allocation on the cluster: whether it is served, and the templates to remove.

spec.draResources needs resource.k8s.io/v1 (Kubernetes 1.34+, or an earlier cluster with the
v1 API turned on). Where it is not served, a pod's resourceClaims would be refused or, with the
feature gate off, silently dropped: pods without their devices. So the NIMService is not
deployed at all and says why (`Failed`, reason DRAUnavailable); the timer's runs ask discovery
again (through the CapabilityCache) and deploy once the API appears.

The ResourceClaimTemplates the operator renders (nim_operator.render.resource_claims) change
name whenever their spec changes (a template's spec is immutable), so the ones no longer
rendered cannot be named up front like other optional children: they are found by the
NIMService's labels and deleted when they carry its controller reference.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from nim_operator.child_records import controller_uid
from nim_operator.conditions import Problem, label_selector
from nim_operator.kube import CapabilityCache, KubeClient, ResourceKind
from nim_operator.models import NIMServiceSpec
from nim_operator.render.common import ChildRef, Owner
from nim_operator.render.resource_claims import RESOURCE_API_VERSION, render_claim_templates

__all__ = [
    "CLAIM_TEMPLATES",
    "DRA_UNAVAILABLE",
    "claim_template_children",
    "delete_unwanted_claim_templates",
    "dra_served",
    "dra_unavailable",
]

DRA_UNAVAILABLE = "DRAUnavailable"
CLAIM_TEMPLATES = ResourceKind(RESOURCE_API_VERSION, "resourceclaimtemplates")
# Stands in the owner's `absent` set for "none of its templates are left": a NIMService without
# claimCreationSpec then costs no list per run.
_NONE_LEFT = ChildRef(RESOURCE_API_VERSION, "ResourceClaimTemplate", CLAIM_TEMPLATES.plural, "")


async def dra_served(capabilities: CapabilityCache) -> bool:
    return await capabilities.has(RESOURCE_API_VERSION, CLAIM_TEMPLATES.plural)


def dra_unavailable(spec: NIMServiceSpec, served: bool) -> Problem | None:
    """Why this spec cannot be deployed on a cluster without DRA, or None."""
    if not spec.dra_resources or served:
        return None
    return Problem(
        DRA_UNAVAILABLE,
        f"spec.draResources needs dynamic resource allocation ({RESOURCE_API_VERSION} "
        "ResourceClaims and ResourceClaimTemplates, Kubernetes 1.34 or later), which this "
        "cluster does not serve: nothing is deployed until it does (or draResources is removed)",
    )


def claim_template_children(
    owner: Owner, spec: NIMServiceSpec
) -> list[tuple[ChildRef, dict[str, Any] | None]]:
    """The templates to apply, as reconcile's children (before the pods that use them)."""
    children: list[tuple[ChildRef, dict[str, Any] | None]] = []
    for manifest in render_claim_templates(owner, spec):
        name = manifest["metadata"]["name"]
        ref = ChildRef(RESOURCE_API_VERSION, "ResourceClaimTemplate", CLAIM_TEMPLATES.plural, name)
        children.append((ref, manifest))
    return children


async def delete_unwanted_claim_templates(
    kube: KubeClient, owner: Owner, wanted: Collection[str], absent: set[ChildRef]
) -> None:
    """Delete the owner's templates not in `wanted` (only those it controls)."""
    if not wanted and _NONE_LEFT in absent:
        return
    found = await kube.list(
        CLAIM_TEMPLATES, owner.namespace, label_selector=label_selector(owner.name)
    )
    for template in found:
        meta = template.get("metadata") or {}
        if meta.get("name") not in wanted and controller_uid(template) == owner.uid:
            await kube.delete(CLAIM_TEMPLATES, owner.namespace, meta["name"], uid=meta.get("uid"))
    if wanted:
        absent.discard(_NONE_LEFT)
    else:
        absent.add(_NONE_LEFT)
