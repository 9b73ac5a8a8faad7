"""When each NIMService reached each milestone, as the API server streams it to a client.

The benchmark watches NIMServices, Deployments and Services in its namespace, as any client
would, and stamps each event with `time.monotonic()` on arrival. Milestones, per NIMService:

* `deployment`, `service`: its child of that kind exists; `children`: both do;
* `observed`: `status.observedGeneration` equals `metadata.generation` (the status is written);
* `handled`: kopf's `last-handled-configuration` annotation is there (the change handlers are
  done; the no-op baseline operator reaches this one too);
* `ready`: the `Ready` condition is `True`.

Only the first time counts. Every event is also kept as (time, kind, type), so "did anything
change while the operator was idle" is a count of MODIFIED events in a window; and each event that
changed something is attributed to the client that wrote it, from its managedFields
(`attribution.py`): ReplicaSets and Pods are watched for that too, since on a real cluster the
controller manager creates and updates them after a burst, while the operator may be idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp
import kopf

from bench.operator.attribution import Ledger
from nim_operator import API_GROUP
from nim_operator.kube import ResourceKind

HANDLED_ANNOTATION = f"{API_GROUP}/last-handled-configuration"
NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
SERVICES = ResourceKind("v1", "services")
REPLICASETS = ResourceKind("apps/v1", "replicasets")
PODS = ResourceKind("v1", "pods")
WATCHED = (NIMSERVICES, DEPLOYMENTS, SERVICES, REPLICASETS, PODS)
MILESTONES = ("deployment", "service", "children", "observed", "handled", "ready")


class Timeline:
    """First-seen times of each milestone of each NIMService in one namespace."""

    def __init__(
        self,
        info: kopf.ConnectionInfo,
        namespace: str,
        *,
        agent: str,
        on_first: Callable[[str, str], None] | None = None,
    ) -> None:
        """`on_first(name, milestone)` is called when a NIMService first reaches a milestone."""
        self._info = info
        self._on_first = on_first
        self._namespace = namespace
        self._agent = agent
        self.first: dict[str, dict[str, float]] = defaultdict(dict)
        self.events: list[tuple[float, str, str]] = []
        self.ledger = Ledger()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        headers = dict(self._info.as_http_headers())
        headers["User-Agent"] = self._agent
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._info.as_ssl_context()),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        )
        opened = [asyncio.Event() for _ in WATCHED]
        for kind, ready in zip(WATCHED, opened, strict=True):
            self._tasks.append(asyncio.create_task(self._watch(kind, ready)))
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in opened)), 30)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    def reached(self, name: str, milestone: str) -> float | None:
        return self.first.get(name, {}).get(milestone)

    def modified_between(self, start: float, end: float) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for at, kind, kind_of_event in self.events:
            if start <= at < end and kind_of_event != "ADDED":
                counts[kind] += 1
        return dict(counts)

    async def until(
        self, names: Iterable[str], milestones: Iterable[str], *, within: float
    ) -> bool:
        """Wait until every name reached every milestone; False if not `within` seconds."""
        pending = list(names)
        wanted = tuple(milestones)
        deadline = time.monotonic() + within
        while True:
            pending = [n for n in pending if any(m not in self.first.get(n, {}) for m in wanted)]
            if not pending:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))

    async def settle(self, since: float, *, quiet: float, cap: float) -> tuple[float, bool]:
        """Wait until nobody but the operator changed anything for `quiet` seconds, from `since`
        on (a quiet spell that began before `since` counts); at most until `since + cap`.

        (When it settled, whether it did.) Deletions, and changes whose writer is unknown,
        count as someone else's: they keep the cluster unsettled.
        """
        deadline = since + cap
        while True:
            now = time.monotonic()
            last = self.ledger.last_by_others
            quiet_from = since - quiet if last is None else max(last, since - quiet)
            if now - quiet_from >= quiet:
                return now, True
            if now >= deadline:
                return now, False
            self._changed.clear()
            wait = min(quiet_from + quiet, deadline) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(wait, 0.01))

    # --- watching -------------------------------------------------------------------------------

    async def _watch(self, kind: ResourceKind, opened: asyncio.Event) -> None:
        assert self._session is not None
        url = self._info.server.rstrip("/") + kind.path(self._namespace)
        handle = self._handler(kind)
        version: str | None = None
        while True:
            params = {"watch": "true", "timeoutSeconds": "600"}
            if version:
                params["resourceVersion"] = version
            try:
                async with self._session.get(url, params=params) as response:
                    if response.status == 404 and not opened.is_set():
                        opened.set()  # a kind this API server does not serve: nothing to see
                        return
                    response.raise_for_status()
                    opened.set()
                    async for line in response.content:
                        arrived = time.monotonic()
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event.get("type") == "ERROR":
                            version = None  # expired: start over from the current state
                            break
                        obj = event.get("object") or {}
                        version = obj.get("metadata", {}).get("resourceVersion") or version
                        kind_of_event = str(event.get("type"))
                        self.events.append((arrived, kind.plural, kind_of_event))
                        self.ledger.observe(kind.plural, kind_of_event, obj, arrived)
                        if kind_of_event != "DELETED" and handle is not None:
                            handle(obj, arrived)
                        self._changed.set()
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.5)

    def _handler(self, kind: ResourceKind) -> Callable[[Mapping[str, Any], float], None] | None:
        if kind == NIMSERVICES:
            return self._nimservice
        if kind not in (DEPLOYMENTS, SERVICES):
            return None  # watched only to see who changes them
        milestone = "deployment" if kind == DEPLOYMENTS else "service"
        return lambda obj, at: self._child(obj, milestone, at)

    def _mark(self, name: str, milestone: str, at: float) -> None:
        if milestone not in self.first[name]:
            self.first[name][milestone] = at
            if self._on_first is not None:
                self._on_first(name, milestone)

    def _child(self, obj: Mapping[str, Any], milestone: str, at: float) -> None:
        name = obj.get("metadata", {}).get("name", "")
        self._mark(name, milestone, at)
        if "deployment" in self.first[name] and "service" in self.first[name]:
            self._mark(name, "children", at)

    def _nimservice(self, obj: Mapping[str, Any], at: float) -> None:
        meta = obj.get("metadata", {})
        name = meta.get("name", "")
        status = obj.get("status") or {}
        generation = meta.get("generation")
        if generation is not None and status.get("observedGeneration") == generation:
            self._mark(name, "observed", at)
        if HANDLED_ANNOTATION in (meta.get("annotations") or {}):
            self._mark(name, "handled", at)
        for condition in status.get("conditions") or []:
            if condition.get("type") == "Ready" and condition.get("status") == "True":
                self._mark(name, "ready", at)
