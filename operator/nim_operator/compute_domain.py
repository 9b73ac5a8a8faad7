"""multiNode.computeDomain in the cluster: whether ComputeDomains are served, and which channel.

A ComputeDomain (resource.nvidia.com/v1beta1) exists only where NVIDIA's DRA driver for GPUs
is installed with its ComputeDomain support. Without the kind, the pods could not get their
IMEX channel: nothing is deployed (a Deployment from before keeps serving) and the NIMService is
Failed with reason ComputeDomainUnavailable, a wait, not a crash loop: the timer's runs ask
discovery again (through the CapabilityCache) and deploy once the kind is served.

With `name`, the pods claim from the channel template the named ComputeDomain declares, so it
is read on each run; a ComputeDomain not there (or without a channel) is Failed with reason
ComputeDomainNotFound until it is. With `create`, the template's name is the operator's own
(nim_operator.render.compute_domain). Either way the ComputeDomain is read once per run for
status.computeDomainStatus (NVIDIA's shape: its name, the driver's status and its nodes); it is
not watched, so a change shows within the reconcile interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nim_operator.conditions import Problem
from nim_operator.kube import CapabilityCache, KubeClient, ResourceKind
from nim_operator.models import ComputeDomainNodeStatus, ComputeDomainStatus, NIMServiceSpec
from nim_operator.render.common import Owner
from nim_operator.render.compute_domain import COMPUTE_DOMAIN_API_VERSION

__all__ = [
    "COMPUTE_DOMAINS",
    "COMPUTE_DOMAIN_NOT_FOUND",
    "COMPUTE_DOMAIN_UNAVAILABLE",
    "DomainView",
    "compute_domains_served",
    "domain_status",
    "read_domain",
]

COMPUTE_DOMAINS = ResourceKind(COMPUTE_DOMAIN_API_VERSION, "computedomains")
COMPUTE_DOMAIN_UNAVAILABLE = "ComputeDomainUnavailable"
COMPUTE_DOMAIN_NOT_FOUND = "ComputeDomainNotFound"


async def compute_domains_served(capabilities: CapabilityCache) -> bool:
    # Asked whether or not this NIMService wants one: one that no longer does may still have a
    # ComputeDomain to delete.
    return await capabilities.has(COMPUTE_DOMAINS.api_version, COMPUTE_DOMAINS.plural)


@dataclass(frozen=True)
class DomainView:
    """What a run needs of the ComputeDomain: the channel of a named one, for the renderer, and
    status.computeDomainStatus. Both None without multiNode.computeDomain."""

    channel: str | None = None
    status: ComputeDomainStatus | None = None


def domain_status(domain: Mapping[str, Any]) -> ComputeDomainStatus:
    """status.computeDomainStatus from a ComputeDomain as its driver reports it (pure).

    The driver writes its status as it likes (or not at all yet): anything missing is left out,
    a node without a name is skipped, and a node's status other than Ready is NotReady.
    """
    meta = domain.get("metadata") or {}
    reported = domain.get("status") or {}
    nodes = [
        ComputeDomainNodeStatus(
            name=str(node["name"]),
            clique_id=str(node.get("cliqueID") or ""),
            status="Ready" if node.get("status") == "Ready" else "NotReady",
        )
        for node in reported.get("nodes") or []
        if isinstance(node, Mapping) and node.get("name")
    ]
    verdict = reported.get("status")
    return ComputeDomainStatus(
        name=str(meta.get("name") or ""),
        status=str(verdict) if verdict else None,
        nodes=nodes or None,
    )


async def read_domain(
    kube: KubeClient, owner: Owner, spec: NIMServiceSpec, served: bool
) -> DomainView | Problem:
    """The ComputeDomain the spec asks for, read once per run; a Problem when it cannot be used.

    A named one must exist and declare its channel. The created one (`<name>`) is read for the
    status only: before its first apply there is none, and the status has no entry yet.
    """
    domain_spec = spec.multi_node.compute_domain if spec.multi_node is not None else None
    if domain_spec is None:
        return DomainView()
    if not served:
        return Problem(
            COMPUTE_DOMAIN_UNAVAILABLE,
            f"spec.multiNode.computeDomain needs ComputeDomains ({COMPUTE_DOMAIN_API_VERSION}), "
            "which this cluster does not serve: install NVIDIA's DRA driver for GPUs with "
            "ComputeDomain support; nothing is deployed until the kind is served",
        )
    name = domain_spec.name or owner.name
    domain = await kube.get(COMPUTE_DOMAINS, owner.namespace, name)
    if domain_spec.name is None:
        return DomainView(status=domain_status(domain) if domain is not None else None)
    channel = ((domain or {}).get("spec") or {}).get("channel") or {}
    template = (channel.get("resourceClaimTemplate") or {}).get("name")
    if domain is None or not template:
        what = "not found" if domain is None else "has no spec.channel.resourceClaimTemplate.name"
        return Problem(
            COMPUTE_DOMAIN_NOT_FOUND,
            f'multiNode.computeDomain.name "{name}" {what} in namespace {owner.namespace}: '
            "create the ComputeDomain, or set computeDomain.create instead",
        )
    return DomainView(channel=str(template), status=domain_status(domain))
