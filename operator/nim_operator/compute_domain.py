"""multiNode.computeDomain in the cluster: whether ComputeDomains are served, and which channel.

A ComputeDomain (resource.nvidia.com/v1beta1) exists only where NVIDIA's DRA driver for GPUs
is installed with its ComputeDomain support. Without the kind, the pods could not get their
IMEX channel: nothing is deployed (a Deployment from before keeps serving) and the NIMService is
Failed with reason ComputeDomainUnavailable, a wait, not a crash loop: the timer's runs ask
discovery again (through the CapabilityCache) and deploy once the kind is served.

With `name`, the pods claim from the channel template the named ComputeDomain declares, so it
is read on each run; a ComputeDomain not there (or without a channel) is Failed with reason
ComputeDomainNotFound until it is. With `create`, the template's name is the operator's own
(nim_operator.render.compute_domain) and nothing is read.
"""

from __future__ import annotations

from nim_operator.conditions import Problem
from nim_operator.kube import CapabilityCache, KubeClient, ResourceKind
from nim_operator.models import NIMServiceSpec
from nim_operator.render.common import Owner
from nim_operator.render.compute_domain import COMPUTE_DOMAIN_API_VERSION

__all__ = [
    "COMPUTE_DOMAINS",
    "COMPUTE_DOMAIN_NOT_FOUND",
    "COMPUTE_DOMAIN_UNAVAILABLE",
    "compute_domains_served",
    "existing_channel",
]

COMPUTE_DOMAINS = ResourceKind(COMPUTE_DOMAIN_API_VERSION, "computedomains")
COMPUTE_DOMAIN_UNAVAILABLE = "ComputeDomainUnavailable"
COMPUTE_DOMAIN_NOT_FOUND = "ComputeDomainNotFound"


async def compute_domains_served(capabilities: CapabilityCache) -> bool:
    # Asked whether or not this NIMService wants one: one that no longer does may still have a
    # ComputeDomain to delete.
    return await capabilities.has(COMPUTE_DOMAINS.api_version, COMPUTE_DOMAINS.plural)


async def existing_channel(
    kube: KubeClient, owner: Owner, spec: NIMServiceSpec, served: bool
) -> str | Problem | None:
    """The channel template of the existing ComputeDomain the spec names; a Problem when it
    cannot be had; None when the spec names none (no computeDomain, or `create`)."""
    domain_spec = spec.multi_node.compute_domain if spec.multi_node is not None else None
    if domain_spec is None:
        return None
    if not served:
        return Problem(
            COMPUTE_DOMAIN_UNAVAILABLE,
            f"spec.multiNode.computeDomain needs ComputeDomains ({COMPUTE_DOMAIN_API_VERSION}), "
            "which this cluster does not serve: install NVIDIA's DRA driver for GPUs with "
            "ComputeDomain support; nothing is deployed until the kind is served",
        )
    name = domain_spec.name
    if name is None:
        return None  # created by the operator, under its own template name
    domain = await kube.get(COMPUTE_DOMAINS, owner.namespace, name)
    channel = ((domain or {}).get("spec") or {}).get("channel") or {}
    template = (channel.get("resourceClaimTemplate") or {}).get("name")
    if domain is None or not template:
        what = "not found" if domain is None else "has no spec.channel.resourceClaimTemplate.name"
        return Problem(
            COMPUTE_DOMAIN_NOT_FOUND,
            f'multiNode.computeDomain.name "{name}" {what} in namespace {owner.namespace}: '
            "create the ComputeDomain, or set computeDomain.create instead",
        )
    return str(template)
