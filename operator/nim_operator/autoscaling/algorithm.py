"""The built-in autoscaler's decision: a pure function of what the pods report.

No I/O, no clock, no Kubernetes: `decide()` takes the policy (from `spec.autoscaling`), one
`Snapshot` of the service and the recommendations made before, and returns the replica count
with its reason. The operator's loop and the benchmark in `bench/` call this same function.

How a decision is made, each step for a reason:

1. **Signal.** Each ready pod that answered gives one number for the chosen metric: `queue` is
   its waiting requests, `running` its requests in flight (running plus waiting: an engine at its
   batch limit runs no more, so "running" alone would hide the load), `kvCache` the fraction of
   its KV cache in use.
2. **Raw recommendation.** With `load` the sum over those pods, the service needs
   `ceil(load / target)` pods. While the average per reporting pod is within
   `target * (1 +- tolerance)` it needs what it has: small wobbles move nothing. Pods still
   starting are capacity on the way: a scale-up adds only beyond the replicas that exist, and a
   scale-down assumes each starting pod will carry `target`.
3. **Capacity floor.** A scale-down never goes below the pods it takes to run every request in
   flight at once at `1 - tolerance` of the engine's concurrency limit (the `num_request_max`
   the pods report). This matters for `queue`: an empty queue says capacity suffices, not how
   much of it, and without the floor each quiet minute would drop the service to minReplicas
   only to queue again (the benchmark in bench/ measures the difference).
4. **Safety.** A ready pod whose metrics could not be read or parsed may be the busiest one:
   while any is missing, nothing is scaled down. While any pod is Pending because no node has
   room (e.g. no free `nvidia.com/gpu`), nothing is scaled up: more pending pods would add no
   capacity, and those already waiting show a cluster autoscaler what to add.
5. **Stabilization.** Up: the lowest recommendation of the last `up_window` seconds, so a spike
   must last that long (0: act at once). Down: the highest of the last `down_window` seconds, so
   the load must stay low that long. Fast up, slow down; a load that swings within one window
   does not make the service flap.
6. **Bounds.** The result is clamped to [min_replicas, max_replicas], also when nothing could be
   measured (a raised minReplicas applies at once). With min_replicas 0 the load alone never
   takes the last pod away: a running service keeps at least one, and only the idle rule
   (`idle.py`: no request for scaleToZeroAfter seconds) scales it to zero; at zero it stays
   there until something (nim-gateway) sets the count to 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CHANGE_REASONS",
    "METRICS",
    "Decision",
    "Metric",
    "PodReading",
    "Policy",
    "Recommendation",
    "Snapshot",
    "decide",
    "pod_signal",
]

Metric = Literal["queue", "running", "kvCache"]
METRICS: tuple[Metric, ...] = ("queue", "running", "kvCache")
# Reasons of a decision that changes the replica count.
CHANGE_REASONS = frozenset(
    {"ScaleUp", "ScaleDown", "BelowMinReplicas", "AboveMaxReplicas", "ScaleToZero"}
)

# What the signal of each metric is, in messages and Events.
_UNITS: dict[Metric, str] = {
    "queue": "waiting requests",
    "running": "requests in flight",
    "kvCache": "KV cache use",
}
# ceil() of a ratio that is an integer up to float noise must not round up.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Policy:
    """`spec.autoscaling` with defaults applied."""

    min_replicas: int
    max_replicas: int
    metric: Metric
    target: float
    tolerance: float = 0.1
    up_window: float = 0.0
    down_window: float = 300.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if not self.target > 0:
            raise ValueError("target must be positive")
        if not 0 <= self.tolerance < 1:
            raise ValueError("tolerance must be in [0, 1)")
        if self.up_window < 0 or self.down_window < 0:
            raise ValueError("windows cannot be negative")


@dataclass(frozen=True)
class PodReading:
    """What one ready pod's metrics endpoint said."""

    running: float
    waiting: float
    # Fraction (0-1) of the KV cache in use; None when the server does not export it.
    kv_cache: float | None = None
    # Requests the pod has finished since it started (a counter; None when not exported): a
    # change between two looks is use that the gauges, read at one instant, can miss.
    finished: float | None = None
    # The engine's concurrency limit (num_request_max); None when not exported.
    capacity: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """One look at the service: the Deployment's replica count and its pods."""

    time: float  # seconds, any monotonic origin
    current: int  # replicas the Deployment asks for now
    readings: tuple[PodReading, ...] = ()  # the ready pods that answered
    unreachable: int = 0  # ready pods whose metrics could not be read or parsed
    starting: int = 0  # pods scheduled (or being created) but not ready yet
    unschedulable: int = 0  # pods Pending because no node has room for them


@dataclass(frozen=True)
class Recommendation:
    time: float
    replicas: int


@dataclass(frozen=True)
class Decision:
    desired: int
    # CamelCase: a CHANGE_REASON, or why the count stays (WithinTolerance, Steady, DownStabilizing,
    # MetricsUnavailable, WaitingForCapacity, ...).
    reason: str
    message: str
    # Average signal per pod that reported it; None when no pod did.
    value: float | None
    # This snapshot's recommendation before stabilization and bounds; None without a signal.
    raw: int | None
    # Pass these to the next `decide` (pruned to the longer window).
    recommendations: tuple[Recommendation, ...] = ()

    @property
    def changes(self) -> bool:
        return self.reason in CHANGE_REASONS


def pod_signal(reading: PodReading, metric: Metric) -> float | None:
    """The number one pod contributes for `metric`, or None if it does not export it."""
    if metric == "queue":
        return reading.waiting
    if metric == "running":
        return reading.running + reading.waiting
    return reading.kv_cache


def _ceil(ratio: float) -> int:
    return math.ceil(ratio - _EPSILON)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


@dataclass(frozen=True)
class _Raw:
    replicas: int | None
    reason: str
    message: str
    value: float | None = None


def _capacity_floor(readings: Sequence[PodReading], tolerance: float) -> int:
    """Pods needed to run every request in flight at once (0 when capacity is not reported)."""
    capacities = [r.capacity for r in readings]
    if not capacities or any(c is None or c <= 0 for c in capacities):
        return 0
    per_pod = math.fsum(c for c in capacities if c is not None) / len(capacities)
    in_flight = math.fsum(r.running + r.waiting for r in readings)
    return _ceil(in_flight / (per_pod * (1.0 - tolerance)))


def _recommend(policy: Policy, snap: Snapshot) -> _Raw:
    """Steps 1-4 of the module docstring: what this snapshot alone asks for."""
    signals = [s for r in snap.readings if (s := pod_signal(r, policy.metric)) is not None]
    # A pod that answered without the metric in use is as good as unreachable for it.
    missing = snap.unreachable + len(snap.readings) - len(signals)
    current = snap.current
    if not signals:
        if missing:
            return _Raw(
                None, "MetricsUnavailable", f"no usable metrics from {missing} ready pod(s)"
            )
        return _Raw(None, "NoReadyPods", "no ready pod to measure")

    load = math.fsum(signals)
    value = load / len(signals)
    ratio = value / policy.target
    seen = (
        f"{_fmt(value)} {_UNITS[policy.metric]} per pod on {len(signals)} pod(s), "
        f"target {_fmt(policy.target)}"
    )
    if ratio > 1 + policy.tolerance:
        needed = _ceil(load / policy.target)
        if needed <= current:
            return _Raw(current, "CapacityStarting", f"{seen}; the pods starting cover it", value)
        if snap.unschedulable:
            return _Raw(
                current,
                "WaitingForCapacity",
                f"{seen}; {snap.unschedulable} pod(s) cannot be scheduled for lack of capacity, "
                "so no replica is added until they are",
                value,
            )
        return _Raw(needed, "ScaleUp", seen, value)
    if ratio < 1 - policy.tolerance:
        if missing:
            return _Raw(
                current,
                "MetricsUnavailable",
                f"{seen}; no usable metrics from {missing} ready pod(s), so no scale-down",
                value,
            )
        # Starting pods will take their share once ready: assume each carries the target.
        needed = _ceil((load + policy.target * snap.starting) / policy.target)
        floor = _capacity_floor(snap.readings, policy.tolerance)
        if floor > needed:
            seen += f"; {floor} pod(s) needed to run all requests in flight"
        return _Raw(min(current, max(needed, floor)), "ScaleDown", seen, value)
    return _Raw(current, "WithinTolerance", f"{seen}, within {policy.tolerance:.0%}", value)


def decide(
    policy: Policy, snapshot: Snapshot, recommendations: Sequence[Recommendation] = ()
) -> Decision:
    """The replica count for `snapshot`, and why; see the module docstring."""
    now = snapshot.time
    current = snapshot.current
    raw = _recommend(policy, snapshot)
    keep = max(policy.up_window, policy.down_window)
    history = [r for r in recommendations if 0 <= now - r.time < keep]

    reason, message = raw.reason, raw.message
    desired = current
    if raw.replicas is not None:
        recent_up = [r.replicas for r in history if now - r.time < policy.up_window]
        recent_down = [r.replicas for r in history if now - r.time < policy.down_window]
        up_floor = min([*recent_up, raw.replicas])
        down_ceiling = max([*recent_down, raw.replicas])
        desired = min(max(current, up_floor), down_ceiling)
        if desired == current and raw.replicas > current:
            reason = "UpStabilizing"
            message += (
                f"; asks for {raw.replicas}, but the lowest recommendation of the last "
                f"{_fmt(policy.up_window)}s is {up_floor}"
            )
        elif desired == current and raw.replicas < current:
            reason = "DownStabilizing"
            message += (
                f"; asks for {raw.replicas}, but the highest recommendation of the last "
                f"{_fmt(policy.down_window)}s is {down_ceiling}"
            )
        elif desired > current:
            reason = "ScaleUp"
        elif desired < current:
            reason = "ScaleDown"
        elif reason in CHANGE_REASONS:
            # The load moved, but what it needs (starting pods and in-flight work counted) is
            # the count there is: nothing changes, so the reason must not say it does.
            reason = "Steady"
            message += f"; {current} replica(s) is what it needs"
        history.append(Recommendation(now, raw.replicas))

    # A service at zero stays there (the gateway wakes it); one that runs keeps a pod.
    low = policy.min_replicas if current == 0 else max(policy.min_replicas, 1)
    low_text = (
        f"minReplicas is {low}"
        if low == policy.min_replicas
        else "at least 1 until idle for scaleToZeroAfter"
    )
    bounded = min(max(desired, low), policy.max_replicas)
    if bounded > desired and bounded > current:
        reason, message = "BelowMinReplicas", f"{current} replicas, {low_text}"
    elif bounded > desired and bounded == current:
        reason, message = "AtMinReplicas", f"{message}; {low_text}"
    elif bounded > desired:
        message += (
            f"; floored at minReplicas {low}" if low == policy.min_replicas else f"; {low_text}"
        )
    elif bounded < desired and bounded < current:
        reason, message = "AboveMaxReplicas", f"{current} replicas, maxReplicas is {bounded}"
    elif bounded < desired and bounded == current:
        reason, message = "AtMaxReplicas", f"{message}; maxReplicas is {policy.max_replicas}"
    elif bounded < desired:
        message += f"; capped at maxReplicas {policy.max_replicas}"
    if raw.replicas is None and bounded == current:
        message += f"; replicas held at {current}"
    return Decision(
        desired=bounded,
        reason=reason,
        message=message,
        value=raw.value,
        raw=raw.replicas,
        recommendations=tuple(history),
    )
