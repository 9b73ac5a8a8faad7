"""A discrete-event model of N inference replicas behind one queue, driven by a trace.

The model, and what it leaves out:

* Each replica serves up to `slots` requests at once (the engine's batch); a request occupies a
  slot for its service time from the trace. Batching does not slow requests down here.
* Requests wait in one FIFO queue in front of the replicas and go to the least busy ready
  replica with a free slot (what a least-request balancer or a gateway approximates; with plain
  round-robin, queues form per pod and waits are longer for every scaler alike).
* A new replica is billed from the moment it is created but serves only after `startup`
  seconds (pulling and loading the model). A removed replica takes no new requests and is billed
  until its last request finishes (a graceful drain). Starting replicas are removed first.
* Every `interval` seconds the scaler sees what the operator would scrape: per ready replica its
  running requests, its share of the queue as waiting requests, and its slot use as the KV-cache
  fraction; plus how many replicas are still starting. It answers with a replica count.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from bench.autoscaling.trace import Request, Trace
from nim_operator.autoscaling.algorithm import PodReading, Snapshot

__all__ = ["Cluster", "Result", "Sample", "Scaler", "simulate"]


class Scaler(Protocol):
    name: str
    interval: float

    def decide(self, snapshot: Snapshot) -> int: ...


@dataclass(frozen=True)
class Cluster:
    slots: int = 8
    startup: float = 120.0
    initial_replicas: int = 1


@dataclass
class _Replica:
    ident: int
    created: float
    ready_at: float
    busy: int = 0
    ready: bool = False
    removed: bool = False
    gone_at: float | None = None


@dataclass(frozen=True)
class Sample:
    time: float
    replicas: int  # billed replicas: starting, ready and draining
    ready: int
    queue: int
    desired: int


@dataclass
class Result:
    scaler: str
    replica_seconds: float
    waits: list[float]
    scale_events: int
    samples: list[Sample] = field(default_factory=list)

    def wait_percentile(self, q: float) -> float:
        if not self.waits:
            return 0.0
        ordered = sorted(self.waits)
        index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return ordered[index]

    @property
    def p95_wait(self) -> float:
        return self.wait_percentile(0.95)

    @property
    def max_replicas(self) -> int:
        return max((s.replicas for s in self.samples), default=0)


_ARRIVAL, _DONE, _READY, _TICK = range(4)


def simulate(trace: Trace, scaler: Scaler, cluster: Cluster = Cluster()) -> Result:
    """Replay `trace` against `scaler`; deterministic for a given trace."""
    seq = itertools.count()
    events: list[tuple[float, int, int, object]] = []

    def push(time: float, kind: int, payload: object = None) -> None:
        heapq.heappush(events, (time, kind, next(seq), payload))

    replicas: list[_Replica] = []
    ids = itertools.count()
    queue: deque[Request] = deque()
    waits: list[float] = []
    samples: list[Sample] = []
    desired = cluster.initial_replicas
    scale_events = 0
    billed = 0.0
    last = 0.0

    def alive() -> list[_Replica]:
        return [r for r in replicas if r.gone_at is None]

    def add(now: float, count: int) -> None:
        for _ in range(count):
            replica = _Replica(next(ids), now, now + cluster.startup)
            replicas.append(replica)
            push(replica.ready_at, _READY, replica)

    def remove(now: float, count: int) -> None:
        # Starting (never ready) first, newest first; then the least busy ready replicas.
        candidates = [r for r in alive() if not r.removed]
        candidates.sort(key=lambda r: (r.ready, r.busy, -r.created))
        for replica in candidates[:count]:
            replica.removed = True
            if replica.busy == 0:
                replica.gone_at = now

    def dispatch(now: float) -> None:
        while queue:
            free = [r for r in replicas if r.ready and not r.removed and r.busy < cluster.slots]
            if not free:
                return
            replica = min(free, key=lambda r: (r.busy, r.ident))
            request = queue.popleft()
            waits.append(now - request.arrival)
            replica.busy += 1
            push(now + request.service, _DONE, replica)

    add(0.0, cluster.initial_replicas)
    for replica in replicas:  # the service exists before the trace starts
        replica.ready, replica.ready_at = True, 0.0
    for request in trace.requests:
        push(request.arrival, _ARRIVAL, request)
    push(scaler.interval, _TICK)
    end = trace.spec.duration

    while events:
        now, kind, _, payload = heapq.heappop(events)
        if now > end and kind in (_TICK, _ARRIVAL):
            continue
        clock = min(now, end)  # bill the trace's duration only
        billed += len(alive()) * (clock - last)
        last = clock
        if kind == _ARRIVAL:
            assert isinstance(payload, Request)
            queue.append(payload)
        elif kind == _DONE:
            assert isinstance(payload, _Replica)
            payload.busy -= 1
            if payload.removed and payload.busy == 0:
                payload.gone_at = now
        elif kind == _READY:
            assert isinstance(payload, _Replica)
            if not payload.removed:
                payload.ready = True
            elif payload.gone_at is None and payload.busy == 0:
                payload.gone_at = now
        else:
            serving = [r for r in alive() if r.ready and not r.removed]
            starting = [r for r in alive() if not r.ready and not r.removed]
            share = len(queue) / len(serving) if serving else 0.0
            readings = tuple(
                PodReading(
                    running=r.busy,
                    waiting=share,
                    kv_cache=r.busy / cluster.slots,
                    capacity=cluster.slots,
                )
                for r in serving
            )
            snapshot = Snapshot(
                time=now, current=desired, readings=readings, starting=len(starting)
            )
            wanted = scaler.decide(snapshot)
            if wanted != desired:
                scale_events += 1
                if wanted > desired:
                    add(now, wanted - desired)
                else:
                    remove(now, desired - wanted)
                desired = wanted
            samples.append(Sample(now, len(alive()), len(serving), len(queue), desired))
            push(now + scaler.interval, _TICK)
        dispatch(now)
    # Requests still queued at the end never started: count their wait so far.
    waits.extend(end - r.arrival for r in queue if r.arrival <= end)
    return Result(scaler.name, billed, waits, scale_events, samples)
