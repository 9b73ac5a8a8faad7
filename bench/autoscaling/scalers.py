"""The three scalers compared, behind one interface (`decide(snapshot) -> replicas`).

* `BuiltIn`: the operator's own `nim_operator.autoscaling.algorithm.decide`, unchanged.
* `KubernetesHPA`: the HorizontalPodAutoscaler controller's algorithm for a `Pods` metric with
  an `AverageValue` target, as the Kubernetes documentation describes it: the ratio of the
  average metric to the target, a 10% tolerance, pods without metrics filled in conservatively
  (at the target when scaling down, at zero when scaling up), the recommendation stabilized over
  a window (default: none up, the highest of the last 300 s down), and the default rate limits
  (up: at most +4 pods or +100% per 15 s, whichever is more; down: -100% per 15 s).
* `KubeAIMovingAverage`: KubeAI's model autoscaler: every `interval` the requests in flight are
  added to a moving average over `time_window` (its buffer starts filled with zeros), the
  desired count is `ceil(average / targetRequests)`, and a scale-down happens only after
  `ceil(scaleDownDelaySeconds / interval)` consecutive checks asked for one.

Each is an independent reimplementation from the published behaviour, fed the same snapshots.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from nim_operator.autoscaling.algorithm import (
    Metric,
    Policy,
    Recommendation,
    Snapshot,
    decide,
    pod_signal,
)

__all__ = ["BuiltIn", "KubeAIMovingAverage", "KubernetesHPA"]


@dataclass
class BuiltIn:
    policy: Policy
    interval: float = 15.0
    name: str = "nimstack"
    _history: tuple[Recommendation, ...] = ()

    def decide(self, snapshot: Snapshot) -> int:
        decision = decide(self.policy, snapshot, self._history)
        self._history = decision.recommendations
        return decision.desired


@dataclass(frozen=True)
class HPAPolicy:
    kind: str  # "Pods" or "Percent"
    value: int
    period: float


@dataclass
class KubernetesHPA:
    metric: Metric
    target: float
    min_replicas: int
    max_replicas: int
    tolerance: float = 0.1
    interval: float = 15.0  # --horizontal-pod-autoscaler-sync-period
    up_window: float = 0.0
    down_window: float = 300.0
    up_policies: tuple[HPAPolicy, ...] = (
        HPAPolicy("Pods", 4, 15.0),
        HPAPolicy("Percent", 100, 15.0),
    )
    down_policies: tuple[HPAPolicy, ...] = (HPAPolicy("Percent", 100, 15.0),)
    name: str = "Kubernetes HPA"
    _recommendations: list[tuple[float, int]] = field(default_factory=list)
    _changes: list[tuple[float, int]] = field(default_factory=list)  # (time, +added / -removed)

    def _raw(self, snap: Snapshot) -> int:
        values = [v for r in snap.readings if (v := pod_signal(r, self.metric)) is not None]
        current = snap.current
        if not values:
            return current  # no metrics: the HPA reports an error and does not scale
        usage = sum(values) / len(values) / self.target
        missing = snap.starting + snap.unreachable
        if missing == 0:
            if abs(1.0 - usage) <= self.tolerance:
                return current
            return math.ceil(usage * len(values))
        filled = values + [self.target if usage < 1.0 else 0.0] * missing
        new_usage = sum(filled) / len(filled) / self.target
        if abs(1.0 - new_usage) <= self.tolerance or (usage < 1.0) != (new_usage < 1.0):
            return current
        replicas = math.ceil(new_usage * len(filled))
        if (new_usage < 1.0 and replicas > current) or (new_usage > 1.0 and replicas < current):
            return current
        return replicas

    def _limit(self, policies: tuple[HPAPolicy, ...], now: float, current: int, up: bool) -> int:
        limits = []
        for policy in policies:
            changed = sum(d for t, d in self._changes if now - t < policy.period and (d > 0) == up)
            start = current - changed  # replicas at the start of the policy's period
            if policy.kind == "Pods":
                limits.append(start + policy.value if up else start - policy.value)
            elif up:
                limits.append(math.ceil(start * (1 + policy.value / 100)))
            else:
                limits.append(math.ceil(start * (1 - policy.value / 100)))
        # selectPolicy Max: the policy allowing the biggest change wins.
        return max(limits) if up else min(limits)

    def decide(self, snapshot: Snapshot) -> int:
        now, current = snapshot.time, snapshot.current
        if not self._recommendations:
            self._recommendations.append((now, current))
        raw = self._raw(snapshot)
        keep = max(self.up_window, self.down_window)
        self._recommendations = [(t, r) for t, r in self._recommendations if now - t < keep]
        up = min([r for t, r in self._recommendations if now - t < self.up_window] + [raw])
        down = max([r for t, r in self._recommendations if now - t < self.down_window] + [raw])
        self._recommendations.append((now, raw))
        desired = current
        if desired < up:
            desired = up
        if desired > down:
            desired = down
        if desired > current:
            desired = min(desired, self._limit(self.up_policies, now, current, up=True))
        elif desired < current:
            desired = max(desired, self._limit(self.down_policies, now, current, up=False))
        desired = min(max(desired, self.min_replicas), self.max_replicas)
        self._changes = [(t, d) for t, d in self._changes if now - t < 1800]
        if desired != current:
            self._changes.append((now, desired - current))
        return desired


@dataclass
class KubeAIMovingAverage:
    target_requests: float
    min_replicas: int
    max_replicas: int
    interval: float = 10.0
    time_window: float = 600.0
    scale_down_delay: float = 30.0
    name: str = "KubeAI moving average"
    _window: deque[float] = field(init=False)
    _consecutive_down: int = 0

    def __post_init__(self) -> None:
        size = math.ceil(self.time_window / self.interval)
        self._window = deque([0.0] * size, maxlen=size)

    def decide(self, snapshot: Snapshot) -> int:
        in_flight = sum(r.running + r.waiting for r in snapshot.readings)
        self._window.append(in_flight)
        average = sum(self._window) / len(self._window)
        wanted = math.ceil(average / self.target_requests)
        wanted = min(max(wanted, self.min_replicas), self.max_replicas)
        current = snapshot.current
        if wanted < current:
            required = math.ceil(self.scale_down_delay / self.interval)
            if self._consecutive_down < required:
                self._consecutive_down += 1
                return current
        else:
            self._consecutive_down = 0
        return wanted
