"""Leader election: only the holder of a coordination.k8s.io/v1 Lease reconciles.

kopf's own peering does not fit: it is eventually consistent (peers learn of each other through
a watch), peers of the same priority all pause, and nothing is a lock. This is the scheme of
client-go's leaderelection instead, on a Lease object and the API server's optimistic
concurrency:

* a candidate reads the Lease every `retry_period` seconds. It may take it when there is none
  (create; a 409 AlreadyExists means another candidate created it first), when nobody holds it
  (released), when it is its own, or when it has expired: this process has seen it unchanged
  for longer than its `leaseDurationSeconds`, timed on its own monotonic clock. A take-over is
  a PUT carrying the resourceVersion that was read, so of two candidates writing at once one
  gets 409 Conflict and stays a standby;
* the leader renews (PUT, with the resourceVersion of its last write) every `retry_period`. When
  it has not managed to for `renew_deadline` seconds (API errors, or someone else holds the
  Lease now), it must stop reconciling at once: `stop_this_process` ends the process, which the
  kubelet restarts as a standby. `renew_deadline < lease_duration` leaves it the difference to
  be gone before a standby may take over;
* on a clean shutdown the leader releases the Lease (no holder, a 1 s duration), so a standby
  takes over at its next try instead of after `lease_duration`.

Expiry is judged as client-go judges it: by how long the Lease has stayed the same in this
process's eyes, never by comparing the renewTime the leader wrote (with its node's clock) with
this node's clock, so a skewed clock cannot hand the Lease over early or late. The price: a
standby that has just started waits one `leaseDurationSeconds` after it first reads a Lease
before it may take it over. The decisions are pure functions of a Lease body and how long it
has been seen unchanged (`can_acquire`, `held_lease`, `released_lease`); `LeaderElector` does the
I/O through `KubeClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp.web

from nim_operator.kube import ApiError, KubeClient, ResourceKind

__all__ = [
    "LEASES",
    "LeaderElector",
    "Leadership",
    "can_acquire",
    "default_identity",
    "format_micro_time",
    "held_lease",
    "holder_of",
    "is_expired",
    "lead",
    "lease_record",
    "released_lease",
    "standby_liveness",
    "stop_this_process",
]

logger = logging.getLogger(__name__)

LEASES = ResourceKind("coordination.k8s.io/v1", "leases")
# metav1.MicroTime on the wire: RFC 3339 with exactly six fractional digits, which Go parses
# strictly (RFC3339Micro); Python's isoformat() drops the fraction when it is zero.
MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
# What a released Lease says: nobody holds it, and whoever reads it may take it at once.
RELEASED_DURATION = 1

Clock = Callable[[], datetime.datetime]
LostFn = Callable[[str], None]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def format_micro_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime(MICRO_TIME)


def default_identity(environ: Mapping[str, str] = os.environ) -> str:
    """Who this process is in the Lease: the pod's name (or the host's), and a random suffix.

    The suffix makes a restarted container a new candidate: it does not mistake the Lease of
    the process it replaces (which may have died mid-reconcile) for its own.
    """
    base = environ.get("POD_NAME", "").strip() or socket.gethostname()
    return f"{base}_{secrets.token_hex(4)}"


# --- decisions: pure functions of a Lease body and the time -------------------------------------


def holder_of(lease: Mapping[str, Any] | None) -> str:
    """The Lease's holder; empty when there is no Lease or nobody holds it."""
    spec = (lease or {}).get("spec") or {}
    return str(spec.get("holderIdentity") or "")


def is_expired(lease: Mapping[str, Any], unchanged_for: float) -> bool:
    """Whether a Lease seen unchanged for `unchanged_for` s outlived its leaseDurationSeconds.

    (No duration: expired, as nothing says how long the holder may be silent.)
    """
    duration = (lease.get("spec") or {}).get("leaseDurationSeconds")
    if not isinstance(duration, int | float):
        return True
    return unchanged_for > duration


def can_acquire(lease: Mapping[str, Any] | None, identity: str, unchanged_for: float) -> bool:
    """Whether `identity` may write itself into the Lease as its holder, the Lease having been
    seen unchanged for `unchanged_for` seconds."""
    if lease is None:
        return True  # create it
    holder = holder_of(lease)
    return not holder or holder == identity or is_expired(lease, unchanged_for)


def lease_record(lease: Mapping[str, Any] | None) -> str:
    """What must change for a Lease to count as renewed: its spec (client-go: its record)."""
    return json.dumps((lease or {}).get("spec") or {}, sort_keys=True)


def held_lease(
    lease: Mapping[str, Any] | None,
    *,
    name: str,
    namespace: str,
    identity: str,
    now: datetime.datetime,
    duration: int,
) -> dict[str, Any]:
    """The Lease to write for `identity` to hold it from `now`: a new one, a take-over or a renewal.

    A take-over counts a transition and starts a new acquireTime; a renewal keeps both. The
    metadata read (resourceVersion above all) is kept, so the write is refused if the Lease
    changed since.
    """
    spec = dict((lease or {}).get("spec") or {})
    renewal = lease is not None and holder_of(lease) == identity
    stamp = format_micro_time(now)
    transitions = int(spec.get("leaseTransitions") or 0)
    if lease is not None and not renewal:
        transitions += 1
    spec.update(
        holderIdentity=identity,
        leaseDurationSeconds=int(duration),
        acquireTime=spec.get("acquireTime") if renewal and spec.get("acquireTime") else stamp,
        renewTime=stamp,
        leaseTransitions=transitions,
    )
    return {**_lease_envelope(lease, name, namespace), "spec": spec}


def released_lease(lease: Mapping[str, Any], *, now: datetime.datetime) -> dict[str, Any]:
    """The Lease as its holder leaves it on a clean shutdown: nobody's, and short."""
    spec = {
        key: value
        for key, value in (lease.get("spec") or {}).items()
        if key not in ("holderIdentity", "acquireTime")
    }
    spec.update(leaseDurationSeconds=RELEASED_DURATION, renewTime=format_micro_time(now))
    meta = lease.get("metadata") or {}
    return {**_lease_envelope(lease, meta.get("name", ""), meta.get("namespace", "")), "spec": spec}


def _lease_envelope(lease: Mapping[str, Any] | None, name: str, namespace: str) -> dict[str, Any]:
    meta = {
        key: copy.deepcopy(value)
        for key, value in ((lease or {}).get("metadata") or {}).items()
        if key != "managedFields"
    }
    meta.setdefault("name", name)
    meta.setdefault("namespace", namespace)
    return {"apiVersion": LEASES.api_version, "kind": "Lease", "metadata": meta}


# --- the elector --------------------------------------------------------------------------------


class LeaderElector:
    """Acquires, keeps and releases one Lease for one identity; see the module docstring."""

    def __init__(
        self,
        kube: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: int,
        renew_deadline: float,
        retry_period: float,
        clock: Clock = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._clock = clock
        self._monotonic = monotonic
        # The Lease as this process last wrote (or, standing by, read) it.
        self.lease: dict[str, Any] | None = None
        self.leading = False
        # Monotonic time at which the last successful write was sent.
        self._renewed_at = 0.0
        # The Lease's record as last read, and the monotonic time it was first seen so.
        self._observed_record: str | None = None
        self._observed_at = 0.0

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    def status(self) -> dict[str, Any]:
        """What the liveness endpoint says about leader election."""
        holder = self.identity if self.leading else holder_of(self.lease)
        return {"identity": self.identity, "leading": self.leading, "holder": holder or None}

    async def acquire(self) -> None:
        """Return once this process holds the Lease; until then try every `retry_period`."""
        announced: str | None = None
        failure = ""
        while True:
            try:
                if await self.try_acquire():
                    logger.info(
                        "Leader election: acquired the Lease %s as %s; reconciling.",
                        self.where,
                        self.identity,
                    )
                    return
            except Exception as e:  # any failure: try again (kopf would retry in 60 s)
                if str(e) != failure:  # once per kind of failure, not every retry period
                    logger.warning(
                        "Leader election: the Lease %s is out of reach: %s", self.where, e
                    )
                failure = str(e)
            else:
                failure = ""
                holder = holder_of(self.lease)
                # No holder yet means another candidate's create beat ours (409) before we read
                # its Lease: say who holds it once a read shows it.
                if holder and holder != announced:
                    spec = (self.lease or {}).get("spec") or {}
                    logger.info(
                        "Leader election: standing by as %s; the Lease %s is held by %s "
                        "(renewed %s, for %ss).",
                        self.identity,
                        self.where,
                        holder,
                        spec.get("renewTime"),
                        spec.get("leaseDurationSeconds"),
                    )
                    announced = holder
            await asyncio.sleep(self.retry_period)

    async def try_acquire(self) -> bool:
        """One try: read the Lease and, if it may be taken, take it. True when ours now."""
        current = await self.kube.get(LEASES, self.namespace, self.name)
        self.lease = current
        sent = self._monotonic()
        record = lease_record(current)
        if record != self._observed_record:
            self._observed_record, self._observed_at = record, sent
        if not can_acquire(current, self.identity, sent - self._observed_at):
            return False
        now = self._clock()
        body = held_lease(
            current,
            name=self.name,
            namespace=self.namespace,
            identity=self.identity,
            now=now,
            duration=self.lease_duration,
        )
        try:
            if current is None:
                written = await self.kube.create(LEASES, self.namespace, body)
            else:
                written = await self.kube.replace(LEASES, self.namespace, self.name, body)
        except ApiError as e:
            if e.status == 409:  # AlreadyExists or Conflict: another candidate was first
                return False
            raise
        self._held(written, sent)
        return True

    async def keep(self, on_lost: LostFn) -> None:
        """Renew every `retry_period` until cancelled; `on_lost` once renewing has failed."""
        while True:
            remaining = self._renewed_at + self.renew_deadline - self._monotonic()
            if remaining <= 0:
                self._lose(on_lost, f"could not renew it for {self.renew_deadline}s")
                return
            await asyncio.sleep(min(self.retry_period, remaining))
            remaining = self._renewed_at + self.renew_deadline - self._monotonic()
            if remaining <= 0:
                continue
            try:
                async with asyncio.timeout(remaining):
                    renewed = await self.renew()
            except TimeoutError:
                continue
            # Any failure counts against the deadline; none may end renewing while this process
            # goes on reconciling.
            except Exception as e:
                logger.warning("Leader election: renewing the Lease %s failed: %s", self.where, e)
                continue
            if renewed is False:
                self._lose(on_lost, f"it is held by {holder_of(self.lease) or 'nobody'} now")
                return

    async def renew(self) -> bool | None:
        """One renewal: True if renewed, False if the Lease is not ours any more, None if the
        Lease kept changing under us (try again, until the renew deadline)."""
        for _ in range(2):  # the second time with a fresh read, if someone else wrote it
            sent = self._monotonic()
            body = held_lease(
                self.lease,
                name=self.name,
                namespace=self.namespace,
                identity=self.identity,
                now=self._clock(),
                duration=self.lease_duration,
            )
            try:
                if self.lease is None:
                    written = await self.kube.create(LEASES, self.namespace, body)
                else:
                    written = await self.kube.replace(LEASES, self.namespace, self.name, body)
            except ApiError as e:
                if e.status != 409:
                    raise
                # Written since our last write: by its new holder, or someone editing labels.
                self.lease = await self.kube.get(LEASES, self.namespace, self.name)
                if self.lease is not None and holder_of(self.lease) != self.identity:
                    return False
                continue
            self._held(written, sent)
            return True
        return None

    async def release(self) -> None:
        """Give the Lease up, if this process still holds it (a clean shutdown)."""
        if not self.leading or self.lease is None:
            return
        self.leading = False
        for _ in range(2):  # the second time with a fresh read, if it was written since ours
            body = released_lease(self.lease, now=self._clock())
            try:
                self.lease = await self.kube.replace(LEASES, self.namespace, self.name, body)
            except ApiError as e:
                # A 409 can be our own renewal that landed while shutting down: read it again
                # and release what we still hold. Otherwise the Lease expires on its own.
                if e.status == 409 and await self._still_ours():
                    continue
                logger.warning("Leader election: releasing the Lease %s failed: %s", self.where, e)
                return
            logger.info("Leader election: released the Lease %s.", self.where)
            return

    async def _still_ours(self) -> bool:
        try:
            self.lease = await self.kube.get(LEASES, self.namespace, self.name)
        except ApiError:
            return False
        return self.lease is not None and holder_of(self.lease) == self.identity

    def _held(self, lease: dict[str, Any], sent: float) -> None:
        self.lease = lease
        self.leading = True
        self._renewed_at = sent

    def _lose(self, on_lost: LostFn, why: str) -> None:
        self.leading = False
        message = f"lost the Lease {self.where} ({why}); this process stops reconciling"
        logger.error("Leader election: %s.", message)
        on_lost(message)


def stop_this_process(grace: float) -> LostFn:
    """What a leader that lost its Lease does: SIGTERM to itself, os._exit after `grace` s.

    SIGTERM makes kopf stop its handlers and shut down; the hard exit (from a thread, so a
    stuck event loop cannot delay it) makes sure this process is gone before a standby may
    take over. The kubelet then restarts the container, as a standby.
    """

    def lost(why: str) -> None:
        timer = threading.Timer(grace, os._exit, args=(1,))
        timer.daemon = True
        timer.start()
        os.kill(os.getpid(), signal.SIGTERM)

    return lost


@contextlib.asynccontextmanager
async def standby_liveness(
    endpoint: str, status: Callable[[], Mapping[str, Any]]
) -> AsyncIterator[None]:
    """Answer the liveness probe at `endpoint` (200, `status()` as JSON) while inside.

    kopf starts its own liveness endpoint only once the startup handlers have finished, and a
    standby waits for the Lease inside one: without this, the kubelet would restart it.
    """
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme != "http":
        raise ValueError(f"unsupported liveness endpoint {endpoint!r}: http only")

    async def healthz(request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = {"leaderElection": dict(status())}
        return aiohttp.web.Response(text=json.dumps(body), content_type="application/json")

    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.get(parts.path or "/", healthz)])
    # No access log: a line per probe would drown the one line that says it stands by.
    runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    try:
        site = aiohttp.web.TCPSite(runner, parts.hostname or "localhost", parts.port or 80)
        try:
            await site.start()
        except OSError as e:
            logger.warning("Leader election: cannot serve liveness at %s: %s", endpoint, e)
        yield
    finally:
        await runner.cleanup()  # free the port for kopf's own endpoint


class Leadership:
    """This process's leadership while it reconciles: renewing in the background."""

    def __init__(self, elector: LeaderElector, on_lost: LostFn) -> None:
        self.elector = elector
        self._keeper = asyncio.create_task(elector.keep(on_lost), name="lease renewal")

    async def release(self) -> None:
        """Stop renewing, release the Lease, close the elector's client."""
        self._keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._keeper
        try:
            await self.elector.release()
        finally:
            await self.elector.kube.close()


async def lead(
    *,
    namespace: str,
    name: str,
    lease_duration: int,
    renew_deadline: float,
    retry_period: float,
    liveness_endpoint: str,
    on_lost: LostFn | None = None,
    identity: str | None = None,
) -> Leadership:
    """Wait (answering the liveness probe) until this process holds the Lease, then keep it.

    By default, losing it ends the process (`stop_this_process`), quickly enough to be gone
    before a standby may take over.
    """
    # One attempt per request, within the renew deadline: the elector's loops are the retries.
    kube = await KubeClient.connect(
        timeout=renew_deadline, retries=0, user_agent="nimstack-operator-leader-election"
    )
    elector = LeaderElector(
        kube,
        namespace=namespace,
        name=name,
        identity=identity or default_identity(),
        lease_duration=lease_duration,
        renew_deadline=renew_deadline,
        retry_period=retry_period,
    )
    try:
        async with standby_liveness(liveness_endpoint, elector.status):
            await elector.acquire()
    except BaseException:
        await kube.close()
        raise
    grace = max(1.0, (lease_duration - renew_deadline) / 2)
    return Leadership(elector, on_lost or stop_this_process(grace))
