"""Whether nim-gateway routes to a NIMService: its `GatewayRouted` condition.

The operator does not deploy the gateway (manifests/gateway does) and does not ask it anything
over HTTP. It reads what the cluster already says about it: the gateway's Deployments
(labelled `app.kubernetes.io/name=nim-gateway`), whose pod template is the configuration the
gateway runs with (NIM_GATEWAY_NAMESPACES, or `--namespaces`, says which namespaces' NIMServices
it watches; a static backend list means none) and whose ready replicas have passed the gateway's
readiness probe, which passes once its discovery has listed every NIMService and EndpointSlice.
A NIMService is routed when a ready gateway watches its namespace and it has a ready replica:
then the gateway sends the NIMService's model to it (the gateway takes ready endpoints of the
NIMService's Service, the same pods the Deployment counts as ready); or, for one that scales to
zero when idle, with no replica ready, as the gateway then holds requests and scales it up.

Without any gateway Deployment in the cluster there is no condition at all, as with `Exposed`
when nothing beyond the Service is asked for. The list is re-read at most every
NIM_OPERATOR_GATEWAY_TTL seconds, whatever the number of NIMServices. Everything except
`GatewayDirectory` is pure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from nim_operator.conditions import ConditionReport
from nim_operator.kube import ApiError, KubeClient, ResourceKind
from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner

__all__ = [
    "GATEWAY_LABEL_SELECTOR",
    "GATEWAY_ROUTED",
    "GatewayDirectory",
    "GatewayListing",
    "GatewayView",
    "gateway_view",
    "routed_condition",
    "routed_report",
]

log = logging.getLogger(__name__)

GATEWAY_ROUTED = "GatewayRouted"
# manifests/gateway labels its Deployment so; a gateway deployed otherwise needs the same label.
GATEWAY_LABEL_SELECTOR = "app.kubernetes.io/name=nim-gateway"
GATEWAY_CONTAINER = "gateway"
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
NAMESPACES_VARIABLE = "NIM_GATEWAY_NAMESPACES"
STATIC_VARIABLES = ("NIM_GATEWAY_BACKENDS_FILE", "NIM_GATEWAY_BACKENDS")
# Verbs of the condition's messages, as (singular, plural): one gateway or several.
WATCH, ROUTE, KNOW = ("watches", "watch"), ("routes", "route"), ("knows", "know")


@dataclass(frozen=True)
class GatewayView:
    """One gateway Deployment, as far as routing goes."""

    namespace: str
    name: str
    ready_replicas: int
    # The namespaces it watches; None: every namespace.
    namespaces: frozenset[str] | None
    # It serves a static backend list and watches no NIMService.
    static: bool = False
    # Why its namespaces cannot be read from the Deployment (set from a ConfigMap, say).
    unreadable: str | None = None

    def __str__(self) -> str:
        return f"nim-gateway {self.namespace}/{self.name}"

    def watches(self, namespace: str) -> bool:
        if self.static or self.unreadable is not None:
            return False
        return self.namespaces is None or namespace in self.namespaces


def _split(value: str) -> frozenset[str] | None:
    names = frozenset(part.strip() for part in value.split(",") if part.strip())
    return names or None  # the gateway's own rule: empty means every namespace


def _flag(argv: Sequence[str], flag: str) -> str | None:
    """The value of `--flag value` or `--flag=value` (the last one, as argparse takes it)."""
    found = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
    return found


def _gateway_container(pod_spec: Mapping[str, Any]) -> Mapping[str, Any] | None:
    containers = list(pod_spec.get("containers") or [])
    named = [c for c in containers if c.get("name") == GATEWAY_CONTAINER]
    if named:
        return dict(named[0])
    return dict(containers[0]) if len(containers) == 1 else None


def gateway_view(deployment: Mapping[str, Any]) -> GatewayView:
    """What a gateway Deployment's pod template and status say about its routing."""
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    view = GatewayView(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        # Scaled to zero, a Deployment's readyReplicas is omitted, not 0.
        ready_replicas=int(status.get("readyReplicas") or 0),
        namespaces=None,
    )
    pod_spec = ((spec.get("template") or {}).get("spec")) or {}
    container = _gateway_container(pod_spec)
    if container is None:
        return replace(view, unreadable=f"no container named {GATEWAY_CONTAINER!r}")
    argv = [str(a) for a in (*(container.get("command") or []), *(container.get("args") or []))]
    env = {str(e.get("name")): e for e in container.get("env") or []}
    if _flag(argv, "--backends-file") or _flag(argv, "--backend"):
        return replace(view, static=True)
    if any((env.get(name) or {}).get("value") for name in STATIC_VARIABLES):
        return replace(view, static=True)
    flagged = _flag(argv, "--namespaces")
    if flagged is not None:  # the command line overrides the environment
        return replace(view, namespaces=_split(flagged))
    variable = env.get(NAMESPACES_VARIABLE)
    if variable is not None and "valueFrom" in variable:
        return replace(view, unreadable=f"{NAMESPACES_VARIABLE} comes from valueFrom")
    if variable is not None:
        return replace(view, namespaces=_split(str(variable.get("value") or "")))
    if container.get("envFrom"):
        # envFrom may or may not set it: the Deployment alone cannot tell.
        return replace(view, unreadable=f"{NAMESPACES_VARIABLE} may come from envFrom")
    return view


@dataclass(frozen=True)
class GatewayListing:
    gateways: tuple[GatewayView, ...] = ()
    # Why the gateways could not be listed (nothing listed yet, or the list refused).
    error: str | None = None


def _names(gateways: Sequence[GatewayView], verb: tuple[str, str]) -> str:
    """`nim-gateway ns/a routes`, or `nim-gateways ns/a and ns/b route`: verb (singular, plural)."""
    names = sorted(f"{g.namespace}/{g.name}" for g in gateways)
    if len(names) == 1:
        return f"nim-gateway {names[0]} {verb[0]}"
    return f"nim-gateways {', '.join(names[:-1])} and {names[-1]} {verb[1]}"


def routed_report(
    listing: GatewayListing,
    namespace: str,
    model: str,
    ready_replicas: int,
    *,
    wakes_from_zero: bool = False,
) -> ConditionReport | None:
    """`GatewayRouted` for a NIMService in `namespace` serving `model`; None without gateways.

    `wakes_from_zero`: the NIMService scales to zero when idle, so a gateway holds its requests
    and scales it up rather than answering 503 (docs/gateway.md, "Scale from zero").
    """
    if listing.error is not None and not listing.gateways:
        return ConditionReport(
            GATEWAY_ROUTED,
            "Unknown",
            "GatewayLookupFailed",
            f"could not list nim-gateway Deployments: {listing.error}",
        )
    if not listing.gateways:
        return None
    watching = [g for g in listing.gateways if g.watches(namespace)]
    if not watching:
        unreadable = [g for g in listing.gateways if g.unreadable is not None]
        if unreadable:
            reasons = "; ".join(f"{g}: {g.unreadable}" for g in unreadable)
            return ConditionReport(
                GATEWAY_ROUTED,
                "Unknown",
                "GatewayNamespacesUnknown",
                f"cannot tell whether a gateway watches namespace {namespace} ({reasons})",
            )
        return ConditionReport(
            GATEWAY_ROUTED,
            "False",
            "NamespaceNotWatched",
            f"no nim-gateway watches namespace {namespace} "
            f"({_names(listing.gateways, WATCH)} others or a static list; "
            f"add it to {NAMESPACES_VARIABLE})",
        )
    ready = [g for g in watching if g.ready_replicas > 0]
    if not ready:
        return ConditionReport(
            GATEWAY_ROUTED,
            "False",
            "GatewayNotReady",
            f"{_names(watching, WATCH)} namespace {namespace} but has no ready replica",
        )
    if ready_replicas == 0 and wakes_from_zero:
        return ConditionReport(
            GATEWAY_ROUTED,
            "True",
            "WakesOnRequest",
            f"{_names(ready, ROUTE)} model {model}: with no replica ready it holds requests and "
            "scales this NIMService up (with the manifests/gateway/scale-from-zero grants)",
        )
    if ready_replicas == 0:
        return ConditionReport(
            GATEWAY_ROUTED,
            "False",
            "NoReadyReplica",
            f"{_names(ready, KNOW)} model {model} but answers 503 until a replica of this "
            "NIMService is ready",
        )
    return ConditionReport(
        GATEWAY_ROUTED,
        "True",
        "Routed",
        f"{_names(ready, ROUTE)} model {model} to {ready_replicas} ready "
        f"replica{'s' if ready_replicas != 1 else ''}",
    )


class GatewayDirectory:
    """The cluster's nim-gateway Deployments, listed at most every `ttl` seconds.

    Concurrent reconciles share one list: the first caller after expiry lists, the others wait
    for it. A failed list keeps the previous answer (a hiccup must not flap every NIMService's
    condition) and is retried at the next call.
    """

    def __init__(
        self,
        kube: KubeClient,
        *,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self._ttl = ttl
        self._clock = clock
        self._listing: GatewayListing | None = None
        self._listed_at = 0.0
        self._lock = asyncio.Lock()

    async def listing(self) -> GatewayListing:
        async with self._lock:
            if self._listing is not None and self._clock() - self._listed_at < self._ttl:
                return self._listing
            try:
                deployments = await self._kube.list(
                    DEPLOYMENTS, None, label_selector=GATEWAY_LABEL_SELECTOR
                )
            except ApiError as e:
                if self._listing is not None and self._listing.error is None:
                    log.warning("Listing nim-gateway Deployments failed (%s); kept the last", e)
                    return self._listing
                self._listing = GatewayListing(error=f"{e.status} {e.reason}")
            else:
                views = tuple(sorted(map(gateway_view, deployments), key=str))
                self._listing = GatewayListing(views)
            self._listed_at = self._clock()
            return self._listing


async def routed_condition(
    directory: GatewayDirectory | None,
    owner: Owner,
    spec: NIMServiceSpec | None,
    workload: Mapping[str, Any] | None,
) -> tuple[ConditionReport, ...]:
    """`GatewayRouted` for one reconcile, from its spec and the workload it observed; none
    without a directory (reconcile run outside the operator) or without gateways."""
    if directory is None:
        return ()
    # The model id the gateway routes by: status.model.name, which is this (discovery.py).
    model = spec.served_model_name(owner.name) if spec is not None else owner.name
    ready = int(((workload or {}).get("status") or {}).get("readyReplicas") or 0)
    wakes = spec is not None and spec.idle_timeout() is not None
    listing = await directory.listing()
    report = routed_report(listing, owner.namespace, model, ready, wakes_from_zero=wakes)
    return () if report is None else (report,)
