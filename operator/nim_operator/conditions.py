"""Status computation: what the cluster shows, turned into a truthful NIMService status.

Pure: the inputs are the spec (or why there is none), the live Deployment and its Pods as the
API returns them, and the previous status; the output is the new status. No I/O, no clock.

The four conditions answer four different questions:

* Ready       - can the service answer requests now? (at least one replica is ready)
* Progressing - is the Deployment still moving towards the spec? (rollout or scaling underway)
* Degraded    - is something keeping it from the spec? (pods failing, no GPU, no ServiceMonitor)
* Failed      - does it need a human? (invalid spec, missing Secret/PVC, rollout deadline passed)

Reasons are CamelCase and lifted from the real cause: the scheduler's Unschedulable message,
the kubelet's waiting reason, the last termination reason, the Deployment's own conditions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nim_operator.models import (
    ComputeDomainStatus,
    Condition,
    DRAResourceStatus,
    ModelStatus,
    NIMServiceSpec,
    NIMServiceStatus,
)
from nim_operator.render import Owner, selector_labels, service_endpoint

__all__ = [
    "AUTOSCALER_CONDITION_TYPES",
    "CONDITION_TYPES",
    "OWNED_STATUS_FIELDS",
    "ConditionReport",
    "Observation",
    "Problem",
    "compute_status",
    "diagnose_pods",
    "label_selector",
    "rollout_problem",
    "scheduling_problem",
]

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "Failed")
# Added while spec.autoscaling is set; computed by nim_operator.autoscaling.
AUTOSCALER_CONDITION_TYPES = ("ScalingActive", "ScalingLimited")
# Top-level status fields this module writes; anything else in status (e.g. `autoscaling`)
# belongs to another writer and is left alone.
OWNED_STATUS_FIELDS = (
    "observedGeneration",
    "replicas",
    "readyReplicas",
    "availableReplicas",
    "selector",
    "endpoint",
    "model",
    "state",
    "conditions",
    "draResourceStatuses",
    "computeDomainStatus",
)
MAX_MESSAGE = 1024
AS_EXPECTED = "AsExpected"
# A configuration problem that is a wait, not a failure: the spec's NIMCache is still
# downloading. Nothing is applied meanwhile, and Failed stays False.
CACHE_NOT_READY = "NIMCacheNotReady"

ConditionStatus = Literal["True", "False", "Unknown"]
ServiceState = Literal["Pending", "NotReady", "Ready", "Failed"]


@dataclass(frozen=True)
class Problem:
    """A reason (CamelCase) and a message that a person can act on."""

    reason: str
    message: str


@dataclass(frozen=True)
class ConditionReport:
    """A condition computed elsewhere (the built-in autoscaler's), written with the others."""

    type: str
    status: ConditionStatus
    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    """Everything the status is computed from, as observed in one reconcile."""

    owner: Owner
    generation: int
    spec: NIMServiceSpec | None
    # A configuration problem the operator cannot work around: InvalidSpec, SecretNotFound, ...
    config_problem: Problem | None = None
    deployment: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()
    service_monitor_missing: bool = False
    # Base URL from outside the cluster (nim_operator.exposure), for status.model.
    external_endpoint: str | None = None
    # Written after the four conditions above, e.g. the autoscaler's ScalingActive.
    extra_conditions: Sequence[ConditionReport] = ()
    # status.draResourceStatuses (nim_operator.dra_status); None: the field is not reported.
    dra_resource_statuses: Sequence[DRAResourceStatus] | None = None
    # status.computeDomainStatus (nim_operator.compute_domain); None: the field is not reported.
    compute_domain_status: ComputeDomainStatus | None = None


def label_selector(name: str) -> str:
    """The pods' label selector as a string (status.selector, for `kubectl scale` and HPAs)."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(name).items()))


# --- pods -----------------------------------------------------------------------------------------

# Most severe first: when pods fail in different ways, the status names the worst one.
_SEVERITY = (
    "CreateContainerConfigError",
    "ImagePullBackOff",
    "OOMKilled",
    "CrashLoopBackOff",
    "CreateContainerError",
    "RunContainerError",
    "InsufficientGPU",
    "Unschedulable",
    "PodFailed",
)
_IMAGE_PULL_REASONS = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
_CONTAINER_START_REASONS = {
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


def _container_problem(pod: str, container: Mapping[str, Any]) -> Problem | None:
    name = container.get("name", "?")
    state = container.get("state") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    last = (container.get("lastState") or {}).get("terminated") or {}
    restarts = container.get("restartCount", 0)
    waiting_reason = waiting.get("reason", "")
    detail = waiting.get("message", "")

    if waiting_reason in _CONTAINER_START_REASONS:
        return Problem(waiting_reason, f"pod {pod}: container {name}: {detail or waiting_reason}")
    if waiting_reason in _IMAGE_PULL_REASONS:
        # ErrImagePull and ImagePullBackOff alternate while the kubelet retries: one reason, so
        # the condition (and its Events) do not flap between the two.
        text = detail or f"cannot pull image ({waiting_reason})"
        return Problem("ImagePullBackOff", f"pod {pod}: container {name}: {text}")
    if "OOMKilled" in (terminated.get("reason"), last.get("reason")):
        return Problem(
            "OOMKilled",
            f"pod {pod}: container {name} was killed for exceeding its memory limit "
            f"(restarted {restarts} times); raise resources.limits.memory",
        )
    if waiting_reason == "CrashLoopBackOff":
        exit_code = last.get("exitCode")
        because = f"last exit code {exit_code}" if exit_code is not None else "it keeps exiting"
        if last.get("reason"):
            because += f" ({last['reason']})"
        if last.get("message"):
            because += f": {last['message']}"
        return Problem(
            "CrashLoopBackOff",
            f"pod {pod}: container {name} keeps crashing, {because}; restarted {restarts} times",
        )
    return None


def scheduling_problem(pod: Mapping[str, Any]) -> Problem | None:
    """Why the scheduler finds no node for the pod (InsufficientGPU or Unschedulable), if so."""
    name = pod.get("metadata", {}).get("name", "?")
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            message = condition.get("message", "")
            reason = "InsufficientGPU" if "nvidia.com/gpu" in message else "Unschedulable"
            return Problem(reason, f"pod {name} cannot be scheduled: {message}")
    return None


def _pod_problem(pod: Mapping[str, Any]) -> Problem | None:
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    containers = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    found = [p for c in containers if (p := _container_problem(name, c)) is not None]
    if found:
        return min(found, key=lambda p: _SEVERITY.index(p.reason))
    if (unscheduled := scheduling_problem(pod)) is not None:
        return unscheduled
    if status.get("phase") == "Failed":
        why = status.get("message") or status.get("reason") or "the pod failed"
        return Problem("PodFailed", f"pod {name}: {why}")
    return None


def diagnose_pods(pods: Sequence[Mapping[str, Any]]) -> Problem | None:
    """The most severe problem among the pods, with how many pods share it."""
    live = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]
    problems = [p for pod in live if (p := _pod_problem(pod)) is not None]
    if not problems:
        return None
    worst = min(problems, key=lambda p: _SEVERITY.index(p.reason))
    alike = sum(p.reason == worst.reason for p in problems)
    return Problem(worst.reason, _clip(f"{alike} of {len(live)} pods: {worst.message}"))


# --- the deployment -------------------------------------------------------------------------------


def _deployment_condition(deployment: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def rollout_problem(deployment: Mapping[str, Any]) -> Problem | None:
    """The Deployment controller's own verdict: deadline exceeded, or pods it cannot create."""
    progressing = _deployment_condition(deployment, "Progressing")
    if progressing.get("status") == "False" and (
        progressing.get("reason") == "ProgressDeadlineExceeded"
    ):
        deadline = (deployment.get("spec") or {}).get("progressDeadlineSeconds")
        within = f" ({deadline}s)" if deadline else ""
        return Problem(
            "ProgressDeadlineExceeded",
            f"the rollout exceeded its progress deadline{within}: {progressing.get('message', '')}",
        )
    failure = _deployment_condition(deployment, "ReplicaFailure")
    if failure.get("status") == "True":
        return Problem(
            "ReplicaFailure", f"pods cannot be created: {failure.get('message', '')}".strip()
        )
    return None


@dataclass(frozen=True)
class _Counts:
    desired: int
    current: int
    updated: int
    ready: int
    available: int
    observed: bool  # the controller has seen the Deployment's latest spec

    @classmethod
    def of(cls, deployment: Mapping[str, Any]) -> _Counts:
        spec = deployment.get("spec") or {}
        status = deployment.get("status") or {}
        generation = (deployment.get("metadata") or {}).get("generation", 0)
        return cls(
            desired=int(spec.get("replicas", 1)),
            current=int(status.get("replicas", 0)),
            updated=int(status.get("updatedReplicas", 0)),
            ready=int(status.get("readyReplicas", 0)),
            available=int(status.get("availableReplicas", 0)),
            observed=int(status.get("observedGeneration", 0)) >= int(generation),
        )

    @property
    def rolled_out(self) -> bool:
        return (
            self.observed
            and self.updated >= self.desired
            and self.current == self.desired
            and self.available >= self.desired
        )


# --- conditions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _State:
    status: ConditionStatus
    reason: str
    message: str


def _waiting_reason(pods: Sequence[Mapping[str, Any]], counts: _Counts) -> Problem:
    """Why no replica is ready yet, when nothing is wrong."""
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if running:
        return Problem(
            "Starting",
            f"{len(running)} pod(s) running, waiting for /v1/health/ready "
            "(the model may still be downloading or loading)",
        )
    if pods:
        return Problem("PodsPending", f"{len(pods)} pod(s) being scheduled and started")
    if not counts.observed:
        return Problem("RolloutPending", "the Deployment controller has not acted on it yet")
    return Problem("WaitingForPods", f"0/{counts.desired} replicas exist yet")


def _workload_missing(spec: NIMServiceSpec | None) -> Problem:
    """Why there is nothing to count replicas of: the workload the spec asks for is not there."""
    if spec is not None and spec.multi_node is not None:
        # Not LeaderWorkerSetMissing: that one says the cluster does not serve the kind.
        return Problem("LeaderWorkerSetNotCreated", "the LeaderWorkerSet does not exist yet")
    return Problem("DeploymentMissing", "the Deployment does not exist yet")


def _conditions(obs: Observation) -> tuple[dict[str, _State], ServiceState]:
    """The four conditions and the summary state."""
    config = obs.config_problem
    waiting = config if config is not None and config.reason == CACHE_NOT_READY else None
    config = None if waiting is not None else config
    deployment = obs.deployment
    pod_problem = diagnose_pods(obs.pods)
    rollout = rollout_problem(deployment) if deployment is not None else None
    deadline = rollout if rollout and rollout.reason == "ProgressDeadlineExceeded" else None

    # Failed: a human must act.
    failure = config or deadline
    if failure is not None and failure is deadline and pod_problem is not None:
        failure = Problem(failure.reason, _clip(f"{failure.message}; {pod_problem.message}"))
    failed = (
        _State("True", failure.reason, failure.message)
        if failure is not None
        else _State("False", AS_EXPECTED, "")
    )

    # Degraded: something keeps the service from its spec.
    monitor = (
        Problem(
            "ServiceMonitorCRDMissing",
            "metrics.enabled is set but the cluster has no ServiceMonitor CRD "
            "(monitoring.coreos.com/v1); the ServiceMonitor is skipped",
        )
        if obs.service_monitor_missing
        else None
    )
    degradation = pod_problem or (rollout if rollout is not deadline else None) or monitor
    degraded = (
        _State("True", degradation.reason, degradation.message)
        if degradation is not None
        else _State("False", AS_EXPECTED, "")
    )

    if deployment is None:
        why = config or waiting or _workload_missing(obs.spec)
        ready = _State("False", why.reason, why.message)
        progressing = _State("False", why.reason, why.message)
        return _summarised(ready, progressing, degraded, failed, desired=None)

    counts = _Counts.of(deployment)
    ratio = f"{counts.ready}/{counts.desired} replicas ready"

    if counts.desired == 0:
        ready = _State("False", "ScaledToZero", "replicas is 0: no pod is meant to run")
    elif counts.ready > 0:
        ready = _State("True", "ReplicasReady", ratio)
    else:
        why = pod_problem or rollout or config or _waiting_reason(obs.pods, counts)
        ready = _State("False", why.reason, _clip(f"{ratio}: {why.message}"))

    if deadline is not None:
        progressing = _State("False", deadline.reason, deadline.message)
    elif counts.rolled_out:
        done = "ScaledToZero" if counts.desired == 0 else "RolloutComplete"
        progressing = _State("False", done, f"{ratio}, all up to date")
    else:
        direction = "ScalingDown" if counts.current > counts.desired else "RolloutInProgress"
        progressing = _State(
            "True",
            direction,
            f"{counts.updated}/{counts.desired} replicas updated, {counts.ready} ready",
        )
    return _summarised(ready, progressing, degraded, failed, desired=counts.desired)


def _summarised(
    ready: _State, progressing: _State, degraded: _State, failed: _State, *, desired: int | None
) -> tuple[dict[str, _State], ServiceState]:
    conditions = {
        "Ready": ready,
        "Progressing": progressing,
        "Degraded": degraded,
        "Failed": failed,
    }
    state: ServiceState
    if failed.status == "True":
        state = "Failed"
    elif ready.status == "True":
        state = "Ready"
    elif desired == 0 or degraded.status == "True":
        # Not ready for a reason other than "still starting": scaled to zero or pods failing.
        # Waiting for GPU capacity is Pending, though: nothing is broken, the pod just waits.
        state = "Pending" if degraded.reason in {"InsufficientGPU", "Unschedulable"} else "NotReady"
    else:
        state = "Pending"
    return conditions, state


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def _with_transitions(
    states: Mapping[str, _State],
    previous: Sequence[Mapping[str, Any]],
    *,
    generation: int,
    now: str,
) -> list[Condition]:
    """metav1.Conditions; lastTransitionTime moves only when a condition's status changes."""
    before = {c.get("type"): c for c in previous}
    conditions = []
    for kind, state in states.items():
        old = before.get(kind)
        since = now
        if old is not None and old.get("status") == state.status:
            since = str(old.get("lastTransitionTime") or now)
        conditions.append(
            Condition(
                type=kind,
                status=state.status,
                reason=state.reason,
                message=state.message,
                last_transition_time=since,
                observed_generation=generation,
            )
        )
    return conditions


def compute_status(
    obs: Observation, previous: Mapping[str, Any] | None, *, now: str
) -> dict[str, Any]:
    """The new status (camelCase, as written to the status subresource).

    `now` is an RFC 3339 timestamp, used only for conditions whose status changes.
    """
    states, state = _conditions(obs)
    for extra in obs.extra_conditions:
        states[extra.type] = _State(extra.status, extra.reason, _clip(extra.message))
    conditions = _with_transitions(
        states,
        (previous or {}).get("conditions") or [],
        generation=obs.generation,
        now=now,
    )
    replicas = ready = available = 0
    if obs.deployment is not None:
        counts = _Counts.of(obs.deployment)
        replicas, ready, available = counts.current, counts.ready, counts.available
    endpoint = service_endpoint(obs.owner, obs.spec) if obs.spec is not None else None
    model = (
        ModelStatus(
            name=obs.spec.served_model_name(obs.owner.name),
            cluster_endpoint=endpoint,
            external_endpoint=obs.external_endpoint,
        )
        if obs.spec is not None
        else None
    )
    status = NIMServiceStatus(
        observed_generation=obs.generation,
        replicas=replicas,
        ready_replicas=ready,
        available_replicas=available,
        selector=label_selector(obs.owner.name),
        endpoint=endpoint,
        model=model,
        state=state,
        conditions=conditions,
        dra_resource_statuses=(
            list(obs.dra_resource_statuses) if obs.dra_resource_statuses is not None else None
        ),
        compute_domain_status=obs.compute_domain_status,
    )
    return status.to_k8s()
