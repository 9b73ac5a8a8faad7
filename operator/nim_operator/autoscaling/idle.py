"""When a NIMService may scale to zero: a pure function of what its pods and the gateway say.

A service may scale to zero (`autoscaling.minReplicas: 0`, or a fixed count with
`spec.scaleToZeroAfter`) once it has been idle for its `scaleToZeroAfter` seconds. Idle means
that at every look for that long:

* no ready pod had a request running or waiting (the gauges);
* no ready pod's finished-requests counter moved (a request that came and went between two looks
  shows only there), and no pod seen for the first time had finished any;
* every ready pod answered (one that did not may be the busy one: as with scale-downs, unknown
  is not idle);
* no pod was starting (someone woke the service, and its first requests are still to come);
* nim-gateway did not ask for the service (it writes that time on the NIMService while it holds
  requests for a service with no ready replica: those requests are not on any pod yet).

`IdleWatch` is what is remembered between looks. The first look (also after an operator restart)
starts the clock, so a restart can delay a scale to zero but never cause one.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from nim_operator.autoscaling.algorithm import Decision

__all__ = [
    "DEMAND_ANNOTATION",
    "IdleWatch",
    "Usage",
    "demand_time",
    "watch_idle",
    "with_idle_rule",
]

# Written by nim-gateway (gateway/nim_gateway/wake.py) on a NIMService for which it holds
# requests: the time, RFC 3339 in UTC.
DEMAND_ANNOTATION = "nimstack.dev/demanded-at"


@dataclass(frozen=True)
class Usage:
    """One look at a service that has replicas; times on the caller's monotonic clock."""

    time: float
    # Ready pods that answered: name -> finished-requests counter (None when not exported).
    finished: Mapping[str, float | None] = field(default_factory=dict)
    # Requests running or waiting, summed over those pods.
    in_flight: float = 0.0
    unreachable: int = 0  # ready pods whose metrics could not be read
    starting: int = 0  # pods created, not ready yet
    # When nim-gateway last asked for the service (held requests for it), if ever.
    demand: float | None = None


@dataclass(frozen=True)
class IdleWatch:
    last_active: float
    # The counters as last read, to notice the next change.
    finished: Mapping[str, float] = field(default_factory=dict)
    # Why the service counted as in use at `last_active` (for messages).
    reason: str = "first look"

    def idle_for(self, now: float) -> float:
        return max(0.0, now - self.last_active)

    def idle(self, now: float, after: float) -> bool:
        return self.idle_for(now) >= after


def demand_time(
    annotations: Mapping[str, str] | None, *, now: float, wall_now: float
) -> float | None:
    """The gateway's last demand on the caller's monotonic clock (`now`), or None.

    The annotation is wall-clock time; its age by this process's wall clock is subtracted from
    `now`. A malformed value is ignored (it is not ours to refuse).
    """
    value = (annotations or {}).get(DEMAND_ANNOTATION)
    if not value:
        return None
    try:
        stamp = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return now - (wall_now - stamp.timestamp())


def _activity(previous: IdleWatch | None, usage: Usage) -> str | None:
    """Why this look shows the service in use, or None if it does not."""
    if previous is None:
        return "first look"
    if usage.in_flight > 0:
        return f"{usage.in_flight:g} request(s) running or waiting"
    if usage.unreachable:
        return f"{usage.unreachable} ready pod(s) did not report their metrics"
    if usage.starting:
        return f"{usage.starting} pod(s) starting"
    # A pod's counter moved since the last look; or a pod not counted at the last look (it was
    # not ready then, or not there) has finished requests since.
    moved = [
        name
        for name, count in usage.finished.items()
        if count is not None and previous.finished.get(name, 0.0) != count
    ]
    if moved:
        return f"requests finished on {', '.join(sorted(moved))}"
    return None


def watch_idle(previous: IdleWatch | None, usage: Usage) -> IdleWatch:
    """The watch after `usage`: the clock restarts at any sign of use."""
    counters = {name: count for name, count in usage.finished.items() if count is not None}
    reason = _activity(previous, usage)
    if reason is not None or previous is None:
        watch = IdleWatch(usage.time, counters, reason or "first look")
    else:
        watch = IdleWatch(previous.last_active, counters, previous.reason)
    if usage.demand is not None and usage.demand > watch.last_active:
        watch = IdleWatch(min(usage.demand, usage.time), counters, "requests held by nim-gateway")
    return watch


def with_idle_rule(
    decision: Decision, current: int, watch: IdleWatch | None, now: float, after: float
) -> Decision:
    """The built-in autoscaler's decision for `autoscaling.minReplicas: 0`.

    At zero the service stays there (only a request through nim-gateway wakes it); running, it
    goes to zero once idle for `after` seconds, from any count (no request at all means none of
    its pods is needed); otherwise the load decides as for any other service.
    """
    if current == 0:
        return replace(
            decision,
            desired=0,
            reason="ScaledToZero",
            message="0 replicas while idle; nim-gateway sets 1 when a request for it arrives",
            value=None,
            raw=None,
        )
    if watch is not None and watch.idle(now, after):
        return replace(
            decision,
            desired=0,
            reason="ScaleToZero",
            message=f"no request for {watch.idle_for(now):.0f}s (scaleToZeroAfter {after:g}s)",
        )
    return decision
