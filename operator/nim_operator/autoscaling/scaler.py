"""One evaluation of one NIMService's built-in autoscaler: read, scrape, decide, scale, record.

A kopf daemon per NIMService with `spec.autoscaling` (nim_operator.handlers) calls `evaluate`
every `spec.autoscaling.interval` seconds. One evaluation:

1. reads the NIMService, its Deployment and its Pods, and sorts the pods into ready, starting
   and unschedulable (`take_census`, reusing the status code's scheduling diagnosis);
2. scrapes every ready pod's metrics concurrently, each with a timeout, on the event loop
   (aiohttp), so a hung pod delays nothing else;
3. under the NIMService's reconcile lock: re-reads the Deployment's replica count, calls the pure
   `algorithm.decide`, writes a changed count to the Deployment's scale subresource (under its
   own field manager, as an HPA would), records the outcome in `status.autoscaling` and, when the
   count changed, posts an Event;
4. hands its two conditions (ScalingActive, ScalingLimited) to the status code and asks for a
   status refresh when they changed: reconcile stays the only writer of `status.conditions`.

The recommendations behind the stabilization windows live in memory. After an operator restart
they start from "the current count, now", so nothing is scaled down for one down-window: a
restart can delay a scale-down, never cause one.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import ValidationError

from nim_operator import events
from nim_operator.autoscaling.algorithm import (
    Decision,
    PodReading,
    Policy,
    Recommendation,
    Snapshot,
    decide,
    pod_signal,
)
from nim_operator.autoscaling.idle import IdleWatch, Usage, demand_time, watch_idle, with_idle_rule
from nim_operator.autoscaling.metrics import MetricsError, metrics_urls, scrape
from nim_operator.conditions import ConditionReport, Problem, label_selector, scheduling_problem
from nim_operator.kube import ResourceKind
from nim_operator.models import AutoscalingSpec, AutoscalingStatus, NIMServiceSpec
from nim_operator.reconcile import NIMSERVICES, Logger, Runtime, reconcile_soon
from nim_operator.render import FIELD_MANAGER

__all__ = [
    "HISTORY_LENGTH",
    "SCALER_MANAGER",
    "Autoscaler",
    "PodCensus",
    "autoscaling_status",
    "policy_for",
    "scaler_conditions",
    "take_census",
]

DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
PODS = ResourceKind("v1", "pods")
# The field manager of the replica counts the autoscaler writes (an HPA writes as its own, too).
SCALER_MANAGER = f"{FIELD_MANAGER}-autoscaler"
# Scaling decisions kept in status.autoscaling.history.
HISTORY_LENGTH = 10
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class PodCensus:
    ready: tuple[Mapping[str, Any], ...]
    starting: int  # exist, are scheduled (or being scheduled), not ready yet
    unschedulable: tuple[Problem, ...]  # the scheduler found no node with room


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def take_census(pods: Sequence[Mapping[str, Any]]) -> PodCensus:
    """Sort the service's live pods by what they mean for capacity."""
    ready: list[Mapping[str, Any]] = []
    starting = 0
    unschedulable: list[Problem] = []
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue  # terminating: neither capacity now nor later
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        if _ready(pod):
            ready.append(pod)
        elif (problem := scheduling_problem(pod)) is not None:
            unschedulable.append(problem)
        else:
            starting += 1
    return PodCensus(tuple(ready), starting, tuple(unschedulable))


def policy_for(spec: AutoscalingSpec) -> Policy:
    return Policy(
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        metric=spec.metric,
        target=spec.effective_target(),
        tolerance=spec.tolerance,
        up_window=float(spec.scale_up_stabilization_seconds),
        down_window=float(spec.scale_down_stabilization_seconds),
    )


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def scaler_conditions(
    decision: Decision, census: PodCensus, failures: Sequence[str], policy: Policy
) -> tuple[ConditionReport, ConditionReport]:
    """ScalingActive (does it see the load?) and ScalingLimited (is something capping it?)."""
    if failures:
        shown = "; ".join(failures[:3]) + ("; ..." if len(failures) > 3 else "")
        active = ConditionReport(
            "ScalingActive",
            "False",
            "MetricsUnavailable",
            _clip(
                f"no usable metrics from {len(failures)} of {len(census.ready)} ready pod(s) "
                f"({shown}); replicas are not scaled down until every ready pod answers"
            ),
        )
    elif decision.reason == "ScaledToZero":
        active = ConditionReport("ScalingActive", "False", "ScaledToZero", decision.message)
    elif decision.reason == "NoReadyPods":
        active = ConditionReport(
            "ScalingActive", "False", "NoReadyPods", "no ready pod to measure yet"
        )
    else:
        active = ConditionReport(
            "ScalingActive",
            "True",
            "MetricsAvailable",
            _clip(
                f"{policy.metric} read from {len(census.ready)} ready pod(s): {decision.message}"
            ),
        )

    if census.unschedulable:
        worst = census.unschedulable[0]
        limited = ConditionReport(
            "ScalingLimited",
            "True",
            "WaitingForCapacity",
            _clip(
                f"{len(census.unschedulable)} pod(s) wait for a node with room ({worst.message}); "
                "no replica is added until they are scheduled (a cluster autoscaler may be "
                "adding nodes)"
            ),
        )
    elif decision.reason == "AtMaxReplicas" or (
        decision.raw is not None and decision.raw > policy.max_replicas
    ):
        limited = ConditionReport(
            "ScalingLimited",
            "True",
            "AtMaxReplicas",
            _clip(
                f"the load asks for {decision.raw} replicas; maxReplicas is {policy.max_replicas}"
            ),
        )
    else:
        limited = ConditionReport(
            "ScalingLimited",
            "False",
            "WithinBounds",
            f"replicas within [{policy.min_replicas}, {policy.max_replicas}]",
        )
    return active, limited


def _significant(value: float | None) -> float | None:
    # Three significant digits: enough to read, and the status is not rewritten for noise.
    return None if value is None else float(f"{value:.3g}")


def autoscaling_status(
    previous: Mapping[str, Any] | None,
    *,
    policy: Policy,
    decision: Decision,
    current: int,
    now: str,
) -> dict[str, Any]:
    """status.autoscaling after `decision`: the latest evaluation and the bounded history."""
    previous = previous or {}
    history = list(previous.get("history") or [])
    last_scale_time = previous.get("lastScaleTime")
    value = _significant(decision.value)
    if decision.desired != current:
        record: dict[str, Any] = {
            "time": now,
            "from": current,
            "to": decision.desired,
            "metric": policy.metric,
            "reason": decision.reason,
        }
        if value is not None:
            record["value"] = value
        history = [*history, record][-HISTORY_LENGTH:]
        last_scale_time = now
    status = AutoscalingStatus.model_validate(
        {
            "metric": policy.metric,
            "target": policy.target,
            "currentMetric": value,
            "currentReplicas": current,
            "desiredReplicas": decision.desired,
            "lastScaleTime": last_scale_time,
            "reason": decision.reason,
            "message": _clip(decision.message, 4096),
            "history": history or None,
        }
    )
    return status.to_k8s()


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(
        ref.get("uid") == uid and ref.get("controller")
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
    )


class Autoscaler:
    """The built-in autoscaler of every NIMService this operator runs; lives in kopf's memo."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        scrape_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._runtime = runtime
        self._scrape_timeout = scrape_timeout
        self._clock = clock
        self._wall_clock = wall_clock
        self._session: aiohttp.ClientSession | None = None
        self._recommendations: dict[str, tuple[Recommendation, ...]] = {}
        self._last_reason: dict[str, str] = {}
        # Services that may scale to zero: since when each has been idle (idle.py).
        self._idle: dict[str, IdleWatch] = {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # Pods come and go: no keep-alive pool of dead addresses, no cookies.
                connector=aiohttp.TCPConnector(limit=64, force_close=True),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": "nimstack-operator-autoscaler"},
                timeout=aiohttp.ClientTimeout(total=self._scrape_timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def forget(self, uid: str) -> None:
        self._recommendations.pop(uid, None)
        self._last_reason.pop(uid, None)
        self._idle.pop(uid, None)

    async def _read_pods(
        self, pods: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, PodReading], list[str]]:
        """The readings of the pods that answered, by pod name, and what the others said."""
        session = self._http()
        results = await asyncio.gather(
            *(scrape(session, metrics_urls(p)) for p in pods),
            return_exceptions=True,
        )
        readings: dict[str, PodReading] = {}
        failures: list[str] = []
        for pod, result in zip(pods, results, strict=True):
            name = (pod.get("metadata") or {}).get("name", "?")
            if isinstance(result, PodReading):
                readings[name] = result
            elif isinstance(result, MetricsError):
                failures.append(f"{name}: {result}")
            elif isinstance(result, Exception):
                failures.append(f"{name}: {type(result).__name__}: {result}")
            else:
                raise result  # cancellation: let it through
        return readings, failures

    @staticmethod
    def _with_metric(
        answered: Mapping[str, PodReading], failures: Sequence[str], policy: Policy
    ) -> tuple[list[PodReading], list[str]]:
        """The readings that have the policy's metric; the failures, with those that lack it."""
        readings: list[PodReading] = []
        missing = list(failures)
        for name, reading in answered.items():
            if pod_signal(reading, policy.metric) is None:
                missing.append(f"{name}: its metrics have no {policy.metric} gauge")
            else:
                readings.append(reading)
        return readings, missing

    def _watch_idle(
        self,
        uid: str,
        body: Mapping[str, Any],
        *,
        now: float,
        answered: Mapping[str, PodReading],
        unreachable: int,
        starting: int,
    ) -> IdleWatch:
        """Record one look at a service that may scale to zero; the updated watch."""
        usage = Usage(
            time=now,
            finished={name: r.finished for name, r in answered.items()},
            in_flight=sum(r.running + r.waiting for r in answered.values()),
            unreachable=unreachable,
            starting=starting,
            demand=demand_time(
                (body.get("metadata") or {}).get("annotations"),
                now=now,
                wall_now=self._wall_clock(),
            ),
        )
        watch = watch_idle(self._idle.get(uid), usage)
        self._idle[uid] = watch
        return watch

    @staticmethod
    def _live_spec(body: Mapping[str, Any] | None, uid: str | None) -> NIMServiceSpec | None:
        """The spec of a live NIMService (the same object, if `uid`), else None."""
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        if uid is not None and body["metadata"].get("uid") != uid:
            return None
        try:
            return NIMServiceSpec.from_body(dict(body.get("spec") or {}))
        except ValidationError:
            return None  # reconcile reports the invalid spec

    @staticmethod
    def _autoscaled_spec(body: Mapping[str, Any] | None, uid: str | None) -> NIMServiceSpec | None:
        """The spec of a live, autoscaled NIMService (the same object, if `uid`), else None."""
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        if uid is not None and body["metadata"].get("uid") != uid:
            return None
        try:
            spec = NIMServiceSpec.from_body(dict(body.get("spec") or {}))
        except ValidationError:
            return None  # reconcile reports the invalid spec
        return spec if spec.autoscaling is not None else None

    async def evaluate(self, namespace: str, name: str, *, logger: Logger) -> float | None:
        """One evaluation; the seconds until the next, or None when there is nothing to scale."""
        kube = self._runtime.kube
        body = await kube.get(NIMSERVICES, namespace, name)
        spec = self._live_spec(body, None)
        if body is None or spec is None:
            return None
        if spec.autoscaling is None:
            if spec.scale_to_zero_after is None:
                return None
            return await self._evaluate_fixed(namespace, name, body, spec, logger=logger)
        interval = float(spec.autoscaling.interval)
        uid = body["metadata"]["uid"]

        deployment = await kube.get(DEPLOYMENTS, namespace, name)
        if deployment is None or not _controlled_by(deployment, uid):
            return interval  # reconcile creates it
        pods = await kube.list(PODS, namespace, label_selector=label_selector(name))
        census = take_census(pods)
        answered, unreachable = await self._read_pods(census.ready)
        readings, failures = self._with_metric(answered, unreachable, policy_for(spec.autoscaling))

        slot = self._runtime.slot(uid)
        async with slot.lock:
            # The count and the spec may have moved while the pods were being scraped.
            fresh = await kube.get(NIMSERVICES, namespace, name)
            live = await kube.get(DEPLOYMENTS, namespace, name)
            spec = self._autoscaled_spec(fresh, uid)
            if fresh is None or spec is None or spec.autoscaling is None:
                return None
            if live is None or not _controlled_by(live, uid):
                return interval
            policy = policy_for(spec.autoscaling)
            interval = float(spec.autoscaling.interval)
            current = int((live.get("spec") or {}).get("replicas", 1))
            live_pods = len(census.ready) + census.starting + len(census.unschedulable)
            now = self._clock()
            snapshot = Snapshot(
                time=now,
                current=current,
                readings=tuple(readings),
                unreachable=len(failures),
                # Pods the ReplicaSet has yet to create are starting too.
                starting=census.starting + max(0, current - live_pods),
                unschedulable=len(census.unschedulable),
            )
            history = self._recommendations.get(uid, (Recommendation(now, current),))
            decision = decide(policy, snapshot, history)
            after = spec.idle_timeout()
            if after is None:
                self._idle.pop(uid, None)
            else:
                watch = None
                if current == 0:
                    self._idle.pop(uid, None)  # the clock starts anew at the next wake
                else:
                    watch = self._watch_idle(
                        uid,
                        fresh,
                        now=now,
                        answered=answered,
                        unreachable=len(unreachable),
                        # Pods waiting for a node are not counted: a service woken when no
                        # GPU is free may go back to zero once nobody asks for it.
                        starting=snapshot.starting,
                    )
                decision = with_idle_rule(decision, current, watch, now, float(after))
            self._recommendations[uid] = decision.recommendations
            if decision.desired == 0:
                # A wake (even before the next evaluation) starts a new idle clock.
                self._idle.pop(uid, None)
            if decision.desired != current:
                await kube.merge_patch(
                    DEPLOYMENTS,
                    namespace,
                    name,
                    {"spec": {"replicas": decision.desired}},
                    subresource="scale",
                    field_manager=SCALER_MANAGER,
                )
            previous = (fresh.get("status") or {}).get("autoscaling") or {}
            block = autoscaling_status(
                previous, policy=policy, decision=decision, current=current, now=_now()
            )
            if block != previous:
                # Merge patch: keys this evaluation no longer reports are removed.
                patch = {"status": {"autoscaling": {**dict.fromkeys(previous), **block}}}
                await kube.merge_patch(
                    NIMSERVICES,
                    namespace,
                    name,
                    patch,
                    subresource="status",
                    field_manager=SCALER_MANAGER,
                )
            conditions = scaler_conditions(decision, census, failures, policy)
            refresh = conditions != slot.autoscaler_conditions
            slot.autoscaler_conditions = conditions

        if decision.desired != current:
            verb = "ScaledUp" if decision.desired > current else "ScaledDown"
            message = _clip(f"{current} -> {decision.desired} replicas: {decision.message}")
            self._runtime.post_events(fresh, [events.EventNote("Normal", verb, message)])
            logger.info("%s %s", verb, message)
        elif decision.reason != self._last_reason.get(uid):
            logger.info("Autoscaling: %s: %s", decision.reason, decision.message)
        self._last_reason[uid] = decision.reason
        if refresh:
            await reconcile_soon(self._runtime, namespace, name, uid, logger=logger)
        return interval

    async def _evaluate_fixed(
        self,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        spec: NIMServiceSpec,
        *,
        logger: Logger,
    ) -> float:
        """A fixed count with `spec.scaleToZeroAfter`: set spec.replicas to 0 once idle.

        The count is the NIMService's own (what `kubectl scale` and nim-gateway write), so this
        writes it there and reconcile moves the Deployment, as for any other change of it.
        """
        after = spec.scale_to_zero_after
        assert after is not None
        # Often enough to act within a quarter of the idle time, at most every 15 s.
        interval = float(max(1, min(15, after // 4)))
        uid = body["metadata"]["uid"]
        wanted = spec.desired_replicas() or 0
        if wanted == 0:
            self._idle.pop(uid, None)  # at zero: the clock starts anew at the next wake
            return interval
        kube = self._runtime.kube
        deployment = await kube.get(DEPLOYMENTS, namespace, name)
        if deployment is None or not _controlled_by(deployment, uid):
            return interval  # reconcile creates it
        current = int((deployment.get("spec") or {}).get("replicas", 1))
        pods = await kube.list(PODS, namespace, label_selector=label_selector(name))
        census = take_census(pods)
        answered, unreachable = await self._read_pods(census.ready)
        live_pods = len(census.ready) + census.starting + len(census.unschedulable)
        now = self._clock()
        watch = self._watch_idle(
            uid,
            body,
            now=now,
            answered=answered,
            unreachable=len(unreachable),
            # Pods the ReplicaSet has yet to create (or reconcile has yet to ask for) count too.
            starting=census.starting + max(0, max(current, wanted) - live_pods),
        )
        if not watch.idle(now, after):
            return interval
        async with self._runtime.slot(uid).lock:
            fresh = await kube.get(NIMSERVICES, namespace, name)
            now_spec = self._live_spec(fresh, uid)
            if fresh is None or now_spec is None or now_spec.scale_to_zero_after is None:
                return interval
            wanted = now_spec.desired_replicas() or 0
            if wanted == 0:
                return interval
            await kube.merge_patch(
                NIMSERVICES,
                namespace,
                name,
                {"spec": {"replicas": 0}},
                field_manager=SCALER_MANAGER,
            )
        self._idle.pop(uid, None)
        message = _clip(
            f"{wanted} -> 0 replicas: no request for {watch.idle_for(now):.0f}s "
            f"(scaleToZeroAfter {after}s); nim-gateway sets 1 when a request for it arrives"
        )
        self._runtime.post_events(fresh, [events.EventNote("Normal", "ScaledDown", message)])
        logger.info("ScaledDown %s", message)
        return interval
