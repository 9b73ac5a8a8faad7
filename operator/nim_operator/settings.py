"""Operator settings: ours from NIM_OPERATOR_* environment variables, and kopf's in one place.

`Settings` is read once at import of `nim_operator.handlers`, because kopf takes a timer's interval
when the handler is registered. `configure_kopf` is what the one `@kopf.on.startup` handler calls.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import kopf
from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nim_operator import API_GROUP
from nim_operator.child_records import WATCHED_CACHE_CHILDREN, WATCHED_CHILDREN
from nim_operator.render.labels import FIELD_MANAGER, MANAGED_BY_LABEL

__all__ = [
    "FINALIZER",
    "Settings",
    "configure_kopf",
    "managed_children_selector",
    "pod_namespace",
]

FINALIZER = f"{API_GROUP}/finalizer"
# Where a pod finds its own namespace when the downward API does not set POD_NAMESPACE.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Seconds kopf's per-object worker waits for another event before it exits (see configure_kopf).
WORKER_IDLE_TIMEOUT = 0.5


class Settings(BaseSettings):
    """Knobs of the operator process; each field is `NIM_OPERATOR_<FIELD NAME>`."""

    model_config = SettingsConfigDict(env_prefix="NIM_OPERATOR_", frozen=True)

    # How often every NIMService is reconciled even without events: the bound on how long a
    # hand-edited child, or one whose deletion event was missed, can stay wrong.
    reconcile_interval: float = Field(
        default=60.0, gt=0, description="Seconds between timer reconciles of each NIMService."
    )
    # Child (Deployment/Pod) events within this window are folded into one reconcile.
    child_event_delay: float = Field(
        default=0.5, ge=0, description="Child events within this many seconds fold into one run."
    )
    # How long "the cluster has (no) ServiceMonitor CRD" is believed before asking again.
    capability_ttl: float = Field(
        default=300.0, ge=0, description="Seconds an optional CRD's presence is trusted."
    )
    # How long the list of nim-gateway Deployments (the GatewayRouted condition) is believed:
    # short, as a gateway turning ready should show soon; one label-selected list per period.
    gateway_ttl: float = Field(
        default=10.0, ge=0, description="Seconds the list of nim-gateway Deployments is trusted."
    )
    api_timeout: float = Field(
        default=30.0, gt=0, description="Seconds one Kubernetes API request may take."
    )
    # Reconciles talking to the API server at once. When 1,000 NIMServices arrive together, a
    # bound lets them finish in turn instead of all late together, and keeps the operator's
    # memory at what a few runs hold rather than a thousand (the heap does not shrink again).
    max_concurrent_reconciles: int = Field(
        default=16, ge=1, description="Reconciles talking to the API server at once."
    )
    # Budget of one GET of a pod's /v1/metrics by the built-in autoscaler; a pod slower than
    # this counts as unreachable (which holds scale-downs), not as idle.
    scrape_timeout: float = Field(
        default=2.0, gt=0, description="Seconds the autoscaler waits for one pod's /v1/metrics."
    )
    api_retries: int = Field(
        default=4, ge=0, description="Retries of an API request that failed transiently."
    )
    # Comma-separated namespaces or globs (e.g. "team-*"); empty means the whole cluster.
    namespaces: str = Field(
        default="", description="Namespaces or globs to watch, comma-separated; empty: all."
    )
    liveness_endpoint: str = Field(
        default="http://0.0.0.0:8080/healthz", description="Where the liveness probe is served."
    )
    # Watches are closed by the server after this many seconds and reopened: a stuck
    # connection (e.g. through a dead load balancer) cannot silence the operator for long.
    # Whole seconds: it goes into the watch URL as `timeoutSeconds`, which the API server
    # parses as an integer (it answers 400 to "300.0").
    watch_timeout: int = Field(
        default=300, gt=0, description="Whole seconds after which the API server ends a watch."
    )
    # Debug-level logs (every API request kopf makes); never request bodies.
    verbose: bool = Field(default=False, description="Debug logs (every API request).")

    # Leader election (nim_operator.leadership): with several replicas, only the holder of the
    # coordination.k8s.io/v1 Lease reconciles; the others stand by until it is free or expired.
    leader_election: bool = Field(
        default=False, description="Reconcile only while holding the Lease (for replicas > 1)."
    )
    lease_name: str = Field(default="nim-operator", min_length=1, description="The Lease's name.")
    # Empty: the pod's own namespace (POD_NAMESPACE from the downward API, else the service
    # account's namespace file); an error at start if there is none and election is on.
    lease_namespace: str = Field(
        default="",
        validate_default=True,
        description="The Lease's namespace; empty: the pod's own (POD_NAMESPACE).",
    )
    # Whole seconds: they go into the Lease's integer leaseDurationSeconds.
    lease_duration: int = Field(
        default=15,
        gt=0,
        description="Seconds a standby must see the Lease unchanged before taking it.",
    )
    renew_deadline: int = Field(
        default=10,
        gt=0,
        description="Seconds the leader keeps trying to renew before it stops (and exits).",
    )
    retry_period: float = Field(
        default=2.0, gt=0, description="Seconds between renewals, and between a standby's tries."
    )

    @field_validator("lease_namespace")
    @classmethod
    def _lease_namespace(cls, value: str, info: ValidationInfo) -> str:
        value = value or pod_namespace()
        if not value and info.data.get("leader_election"):
            raise ValueError(
                "leader election needs the Lease's namespace: set NIM_OPERATOR_LEASE_NAMESPACE, "
                "or POD_NAMESPACE from the downward API (metadata.namespace)"
            )
        return value

    @field_validator("renew_deadline")
    @classmethod
    def _renew_deadline(cls, value: int, info: ValidationInfo) -> int:
        duration = info.data.get("lease_duration")
        if duration is not None and value >= duration:
            # Otherwise a standby may take over while the old leader still believes it leads.
            raise ValueError(f"must be less than the lease duration ({duration} s)")
        return value

    @field_validator("retry_period")
    @classmethod
    def _retry_period(cls, value: float, info: ValidationInfo) -> float:
        deadline = info.data.get("renew_deadline")
        if deadline is not None and value >= deadline:
            raise ValueError(f"must be less than the renew deadline ({deadline} s)")  # or no retry
        return value

    def namespace_patterns(self) -> list[str]:
        return [ns.strip() for ns in self.namespaces.split(",") if ns.strip()]


def pod_namespace(
    environ: Mapping[str, str] = os.environ, service_account: Path | None = None
) -> str:
    """The namespace this process runs in as a pod; empty outside a cluster."""
    if namespace := environ.get("POD_NAMESPACE", "").strip():
        return namespace
    try:
        path = SERVICE_ACCOUNT_NAMESPACE if service_account is None else service_account
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def managed_children_selector() -> str:
    """The label selector of every child this operator manages."""
    return f"{MANAGED_BY_LABEL}={FIELD_MANAGER}"


def configure_kopf(kopf_settings: kopf.OperatorSettings, settings: Settings) -> None:
    """All of kopf's settings: state under our API group, bounded watches, explicit events."""
    persistence = kopf_settings.persistence
    persistence.finalizer = FINALIZER
    persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )

    watching = kopf_settings.watching
    watching.server_timeout = settings.watch_timeout
    watching.client_timeout = settings.watch_timeout + 30
    watching.connect_timeout = settings.api_timeout
    # Children are watched only to re-reconcile their owner: let the API server filter them, so
    # the operator never streams every Pod (or Service) of the cluster.
    for resource in (*WATCHED_CHILDREN, *WATCHED_CACHE_CHILDREN):
        watching.label_selectors[resource] = managed_children_selector()

    # kopf keeps one worker per object for this long after its last event, holding that event's
    # body. A restart lists every NIMService, Deployment, Service, ServiceAccount and Pod at once:
    # at 1,000 NIMServices, kopf's default 5 s kept ~5,000 bodies alive together, and the heap
    # does not shrink back after such a peak. Our child events need no worker to linger (they
    # only queue a run of the owner), and a new event simply starts a new worker.
    kopf_settings.queueing.idle_timeout = WORKER_IDLE_TIMEOUT

    kopf_settings.networking.connect_timeout = settings.api_timeout
    kopf_settings.networking.request_timeout = settings.api_timeout * 2

    # Events are posted explicitly on condition transitions (see nim_operator.events), never
    # from log lines, so a timer tick does not add an Event every minute.
    kopf_settings.posting.loggers = False
    kopf_settings.posting.level = logging.INFO
    kopf_settings.posting.reporting_component = FIELD_MANAGER

    # No kopf peering: replicas coordinate through a Lease instead (nim_operator.leadership).
    kopf_settings.peering.standalone = True
