"""status.draResourceStatuses: what became of each spec.draResources entry, as NVIDIA reports it.

One entry per draResources entry, named by its pod claim (`dra-<index>`): the ResourceClaim a
resourceClaimName points at, or the ResourceClaimTemplate (named by the user, or generated from
claimCreationSpec) with the claims Kubernetes made from it for the NIMService's pods. Each claim
has a state: pending until the scheduler allocates devices, allocated, reserved once a pod uses
it, deleted while it is being deleted (NVIDIA's words, comma-separated when several hold), and
missing (ours) for a named claim that does not exist.

Kubernetes' resourceclaim controller makes one claim per pod and pod claim from a template; the
claim is owned by the pod and carries the pod claim's name in an annotation. Pod claim names
(`dra-0`) repeat across NIMServices in a namespace, so a claim counts only when one of this
NIMService's pods owns it. The pods are the ones the status is computed from anyway; the claims
cost one list per run, and only while the NIMService has draResources and pods or named claims:
narrowed to the NIMService's labels when every entry is a generated template (whose claims carry
them), otherwise the namespace's claims (a user's template or claim has no labels of ours).

`build_dra_statuses` is pure; `observe_dra_statuses` reads the claims and calls it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from nim_operator.conditions import label_selector
from nim_operator.kube import ApiError, KubeClient, ResourceKind
from nim_operator.models import (
    DRAResourceClaimStatusInfo,
    DRAResourceClaimTemplateStatusInfo,
    DRAResourceStatus,
    NIMServiceSpec,
)
from nim_operator.render.common import Owner
from nim_operator.render.resource_claims import RESOURCE_API_VERSION, pod_resource_claims

__all__ = [
    "MISSING",
    "POD_CLAIM_ANNOTATION",
    "RESOURCE_CLAIMS",
    "build_dra_statuses",
    "claim_state",
    "observe_dra_statuses",
]

log = logging.getLogger(__name__)

RESOURCE_CLAIMS = ResourceKind(RESOURCE_API_VERSION, "resourceclaims")
# Set by Kubernetes' resourceclaim controller on a claim it makes from a pod's template.
POD_CLAIM_ANNOTATION = "resource.kubernetes.io/pod-claim-name"
MISSING = "missing"


def claim_state(claim: Mapping[str, Any]) -> str:
    """NVIDIA's state words for a claim: deleted, then pending or allocated[,reserved]."""
    deleting = bool((claim.get("metadata") or {}).get("deletionTimestamp"))
    status = claim.get("status") or {}
    states = ["deleted"] if deleting else []
    if status.get("allocation"):
        states.append("allocated")
        if status.get("reservedFor"):
            states.append("reserved")
    elif not deleting:
        states.append("pending")
    return ",".join(states)


def _owning_pod(claim: Mapping[str, Any]) -> str | None:
    for ref in (claim.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Pod" and ref.get("controller"):
            return str(ref.get("name") or "") or None
    return None


def _pod_claim_of(claim: Mapping[str, Any]) -> str | None:
    annotations = (claim.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(POD_CLAIM_ANNOTATION)
    return str(value) if value else None


def _info(claim: Mapping[str, Any]) -> DRAResourceClaimStatusInfo:
    name = str((claim.get("metadata") or {}).get("name") or "")
    return DRAResourceClaimStatusInfo(name=name, state=claim_state(claim))


def _oldest_first(claim: Mapping[str, Any]) -> tuple[str, str]:
    meta = claim.get("metadata") or {}
    # RFC 3339 in UTC with a Z sorts as text; the name breaks ties (one-second resolution).
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))


def build_dra_statuses(
    owner_name: str,
    spec: NIMServiceSpec,
    pods: Sequence[Mapping[str, Any]],
    claims: Sequence[Mapping[str, Any]],
) -> list[DRAResourceStatus] | None:
    """The entries of status.draResourceStatuses; None without draResources.

    `pods` are the NIMService's pods, `claims` any ResourceClaims of its namespace that include
    those the entries refer to (others are ignored).
    """
    if not spec.dra_resources:
        return None
    pod_names = {(p.get("metadata") or {}).get("name") for p in pods}
    by_name = {(c.get("metadata") or {}).get("name"): c for c in claims}
    made_for_pods: dict[str, list[Mapping[str, Any]]] = {}
    for claim in sorted(claims, key=_oldest_first):
        made_for = _pod_claim_of(claim)
        if made_for is not None and _owning_pod(claim) in pod_names:
            made_for_pods.setdefault(made_for, []).append(claim)
    statuses = []
    for pod_claim in pod_resource_claims(owner_name, spec):
        name = pod_claim["name"]
        if (claim_name := pod_claim.get("resourceClaimName")) is not None:
            found = by_name.get(claim_name)
            info = (
                _info(found)
                if found is not None
                else DRAResourceClaimStatusInfo(name=claim_name, state=MISSING)
            )
            statuses.append(DRAResourceStatus(name=name, resource_claim_status=info))
            continue
        made = [_info(c) for c in made_for_pods.get(name, [])]
        template = DRAResourceClaimTemplateStatusInfo(
            name=pod_claim["resourceClaimTemplateName"], resource_claim_statuses=made or None
        )
        statuses.append(DRAResourceStatus(name=name, resource_claim_template_status=template))
    return statuses


def _needs_claims(spec: NIMServiceSpec, has_pods: bool) -> bool:
    """Without pods no claim is made from a template: only a named claim is left to read."""
    return has_pods or any(r.resource_claim_name is not None for r in spec.dra_resources or [])


def _claims_selector(owner: Owner, spec: NIMServiceSpec) -> str | None:
    """The NIMService's labels when its templates made all the claims (they carry them)."""
    if all(r.claim_creation_spec is not None for r in spec.dra_resources or []):
        return label_selector(owner.name)
    return None  # a user's template or claim has none of our labels: the whole namespace


def _reported(previous: Mapping[str, Any]) -> list[DRAResourceStatus] | None:
    try:
        return [DRAResourceStatus.model_validate(s) for s in previous["draResourceStatuses"]]
    except (KeyError, TypeError, ValidationError):
        return None


async def observe_dra_statuses(
    kube: KubeClient,
    owner: Owner,
    spec: NIMServiceSpec | None,
    pods: Sequence[Mapping[str, Any]],
    *,
    dra_served: bool,
    previous: Mapping[str, Any],
) -> list[DRAResourceStatus] | None:
    """status.draResourceStatuses now; None when there is nothing to report (the field goes).

    Without the DRA API there are no claims to read (and the spec is not deployed). Should the
    list fail, the entries reported before stay (none if none were): a status detail is not
    worth a failed run, nor a named claim reported missing because it could not be read.
    """
    if spec is None or not spec.dra_resources or not dra_served:
        return None
    claims: list[dict[str, Any]] = []
    if _needs_claims(spec, has_pods=bool(pods)):
        selector = _claims_selector(owner, spec)
        try:
            claims = await kube.list(RESOURCE_CLAIMS, owner.namespace, label_selector=selector)
        except ApiError as e:
            log.warning("Listing ResourceClaims for %s failed (%s)", owner.name, e)
            return _reported(previous)
    return build_dra_statuses(owner.name, spec, pods, claims)
