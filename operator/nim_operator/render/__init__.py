"""Pure renderers: a NIMService spec in, the manifests of its children out.

Nothing here does I/O or imports kopf, a Kubernetes client or FastAPI; the same input always
gives the same output, so reconcile can apply the result idempotently.
"""

from __future__ import annotations

from typing import Any

from nim_operator.models import NIMServiceSpec
from nim_operator.render.common import ChildRef, Owner
from nim_operator.render.compute_domain import COMPUTE_DOMAIN_API_VERSION, render_compute_domain
from nim_operator.render.deployment import render_deployment
from nim_operator.render.endpoint_picker import endpoint_picker_children
from nim_operator.render.hpa import render_hpa
from nim_operator.render.httproute import GATEWAY_API_VERSION, render_grpc_route, render_http_route
from nim_operator.render.inference_pool import (
    INFERENCE_POOL_API_VERSION,
    render_inference_pool,
)
from nim_operator.render.ingress import render_ingress
from nim_operator.render.labels import FIELD_MANAGER, child_labels, selector_labels
from nim_operator.render.leaderworkerset import LWS_API_VERSION, render_leader_worker_set
from nim_operator.render.pdb import render_pdb
from nim_operator.render.pvc import default_pvc_name, pvc_name, render_pvc
from nim_operator.render.service import render_service, service_endpoint
from nim_operator.render.service_account import render_service_account
from nim_operator.render.service_monitor import render_service_monitor

__all__ = [
    "FIELD_MANAGER",
    "ChildRef",
    "Owner",
    "child_labels",
    "pvc_name",
    "render_children",
    "render_compute_domain",
    "render_deployment",
    "render_grpc_route",
    "render_hpa",
    "render_http_route",
    "render_ingress",
    "render_leader_worker_set",
    "render_pdb",
    "render_pvc",
    "render_service",
    "render_service_account",
    "render_service_monitor",
    "selector_labels",
    "service_endpoint",
]

Manifest = dict[str, Any]


def render_children(
    owner: Owner,
    spec: NIMServiceSpec,
    *,
    replicas: int | None,
    service_monitor_supported: bool,
    http_routes_supported: bool = False,
    grpc_routes_supported: bool = False,
    inference_pools_supported: bool = False,
    previous_service: str | None = None,
    leader_worker_sets_supported: bool = False,
    compute_domains_supported: bool = False,
    compute_domain_channel: str | None = None,
    keep_workload: str | None = None,
) -> list[tuple[ChildRef, Manifest | None]]:
    """Every child in apply order; a None manifest means "delete it if we own it".

    Left out of the list entirely (neither applied nor deleted):
    - the ServiceMonitor when the cluster has no ServiceMonitor CRD (there can be none to delete);
    - an HTTPRoute or GRPCRoute when the cluster does not serve that Gateway API kind;
    - the InferencePool when the cluster does not serve that kind (the endpoint picker's
      children are then deleted if ours: a picker without its pool has nothing to do);
    - the LeaderWorkerSet when the cluster does not serve that kind (with spec.multiNode,
      reconcile stops before rendering: the server would have nowhere to run);
    - the ComputeDomain when the cluster does not serve that kind (likewise with
      multiNode.computeDomain); `compute_domain_channel` is the channel template of an existing
      ComputeDomain that multiNode.computeDomain.name names (reconcile reads it);

    - `keep_workload` ("Deployment" or "LeaderWorkerSet"), the workload of the shape the spec no
      longer asks for, while the new one has no ready replica (a handover, see
      nim_operator.multinode.workload_to_keep); a kept Deployment keeps the Service selecting
      every pod.

    `previous_service` is the Service name the status last reported: renamed since, it is deleted.
    - the PVC when the spec mounts an existing claim under the default name, which is the user's.
    """
    name = owner.name
    children: list[tuple[ChildRef, Manifest | None]] = [
        (
            ChildRef("v1", "ServiceAccount", "serviceaccounts", name),
            render_service_account(owner, spec),
        )
    ]
    pvc = render_pvc(owner, spec)
    if pvc is not None:
        children.append(_pvc_ref(pvc_name(name, spec), pvc))
    elif pvc_name(name, spec) != default_pvc_name(name) or spec.storage.pvc is None:
        # A claim we may have created earlier under the default name; reconcile only deletes it
        # when it carries our controller reference (retainPolicy Delete).
        children.append(_pvc_ref(default_pvc_name(name), None))
    # spec.multiNode runs the server as a LeaderWorkerSet instead of the Deployment.
    single_node = spec.multi_node is None
    if keep_workload != "Deployment":
        children.append(
            (
                ChildRef("apps/v1", "Deployment", "deployments", name),
                render_deployment(owner, spec, replicas=replicas) if single_node else None,
            )
        )
    if compute_domains_supported:
        # Before the LeaderWorkerSet: its pods claim from the domain's channel template.
        children.append(
            (
                ChildRef(COMPUTE_DOMAIN_API_VERSION, "ComputeDomain", "computedomains", name),
                render_compute_domain(owner, spec),
            )
        )
    if leader_worker_sets_supported and keep_workload != "LeaderWorkerSet":
        lws = render_leader_worker_set(
            owner, spec, replicas=replicas, compute_domain_channel=compute_domain_channel
        )
        children.append(
            (ChildRef(LWS_API_VERSION, "LeaderWorkerSet", "leaderworkersets", name), lws)
        )
    children += [
        (
            ChildRef("v1", "Service", "services", spec.service_name(name)),
            render_service(owner, spec, every_pod=keep_workload == "Deployment"),
        ),
        (
            ChildRef("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", name),
            render_hpa(owner, spec),
        ),
        (
            ChildRef("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", name),
            render_pdb(owner, spec, replicas=replicas),
        ),
    ]
    # A Service under an earlier name: the NIMService's own (from before expose.service.name was
    # set), or the one the status last reported.
    for old in dict.fromkeys((name, previous_service)):
        if old and old != spec.service_name(name):
            children.append((ChildRef("v1", "Service", "services", old), None))
    children.append(
        (
            ChildRef("networking.k8s.io/v1", "Ingress", "ingresses", name),
            render_ingress(owner, spec),
        )
    )
    if http_routes_supported:
        children.append(
            (
                ChildRef(GATEWAY_API_VERSION, "HTTPRoute", "httproutes", name),
                render_http_route(owner, spec),
            )
        )
    if grpc_routes_supported:
        children.append(
            (
                ChildRef(GATEWAY_API_VERSION, "GRPCRoute", "grpcroutes", name),
                render_grpc_route(owner, spec),
            )
        )
    # expose.router.eppConfig: the endpoint picker, then the InferencePool pointing at it.
    children += endpoint_picker_children(
        owner, spec, inference_pools_supported=inference_pools_supported
    )
    if inference_pools_supported:
        children.append(
            (
                ChildRef(INFERENCE_POOL_API_VERSION, "InferencePool", "inferencepools", name),
                render_inference_pool(owner, spec),
            )
        )
    if service_monitor_supported:
        children.append(
            (
                ChildRef("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors", name),
                render_service_monitor(owner, spec),
            )
        )
    return children


def _pvc_ref(claim: str, manifest: Manifest | None) -> tuple[ChildRef, Manifest | None]:
    return ChildRef("v1", "PersistentVolumeClaim", "persistentvolumeclaims", claim), manifest
