"""Scale from zero: hold requests for a NIMService with no ready replica, and wake it.

A NIMService may be at zero replicas when it says so (`autoscaling.minReplicas: 0`, or a fixed
count with `spec.scaleToZeroAfter`; discovery.wake_target). A request for its model while no
replica is ready is admitted to a bounded wait (`hold_max_per_model` per model,
`hold_max_requests` in all; beyond them: 429 at once) and answered as soon as discovery lists a
ready replica, or with 503 `model_starting` after `hold_timeout` seconds.

While any request waits for a service, a task per service, every `wake_interval` seconds:

1. writes the time on the NIMService (`nimstack.dev/demanded-at`): the operator does not scale
   a service to zero within its idle time of this demand (nim_operator/autoscaling/idle.py),
   so a service is not put back to zero while requests wait for it;
2. reads the /scale subresource it wakes through and, if `spec.replicas` is 0, sets it to 1
   with that read's resourceVersion (a write by anyone else in between wins: 409, read again).
   Only 0 is ever changed, so the gateway never lowers a count or fights an autoscaler.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from starlette.responses import JSONResponse

from nim_gateway.backends import BackendTable, WakeTarget
from nim_gateway.discovery import NIMSERVICE_API
from nim_gateway.errors import error_response
from nim_gateway.kube import ApiError, KubeApi
from nim_gateway.settings import GatewaySettings

__all__ = ["DEMAND_ANNOTATION", "Hold", "Waker"]

log = logging.getLogger(__name__)

# Read by the operator: nim_operator/autoscaling/idle.py has the same name.
DEMAND_ANNOTATION = "nimstack.dev/demanded-at"
# A held request also looks again this often without a table change (a replica's backoff can
# end without one).
RECHECK_SECONDS = 1.0


@dataclass(eq=False)
class Hold:
    """One admitted request waiting for a replica of `model`."""

    model: str
    target: WakeTarget
    deadline: float
    released: bool = False


class Waker:
    def __init__(
        self,
        settings: GatewaySettings,
        table: BackendTable,
        api: KubeApi,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._table = table
        self._api = api
        self._clock = clock
        self._by_model: Counter[str] = Counter()
        self._by_target: Counter[WakeTarget] = Counter()
        self._tasks: dict[WakeTarget, asyncio.Task[None]] = {}

    @property
    def held(self) -> int:
        return sum(self._by_model.values())

    def held_by_model(self) -> dict[str, int]:
        """Requests waiting now, by model (for GET /v1/gateway/backends)."""
        return dict(sorted(self._by_model.items()))

    def admit(self, model: str, target: WakeTarget) -> Hold | None:
        """A place in the wait for `model`, or None when the wait is full.

        Either way the service is woken: a request refused for a full wait is demand too (and
        with the limits at 0, the gateway wakes services without holding anything).
        """
        settings = self._settings
        if target not in self._tasks:
            self._tasks[target] = asyncio.create_task(self._wake(target))
        if (
            self.held >= settings.hold_max_requests
            or self._by_model[model] >= settings.hold_max_per_model
        ):
            return None
        self._by_model[model] += 1
        self._by_target[target] += 1
        return Hold(model, target, self._clock() + settings.hold_timeout)

    def _release(self, hold: Hold) -> None:
        if hold.released:
            return
        hold.released = True
        self._by_model[hold.model] -= 1
        self._by_target[hold.target] -= 1
        # Counter.__pos__: drops the keys that reached zero.
        self._by_model = +self._by_model
        self._by_target = +self._by_target

    async def wait(self, hold: Hold) -> bool:
        """Wait until a replica can take `hold`'s request: True, or False at its deadline."""
        try:
            while True:
                if self._table.lookup(hold.model).candidates:
                    return True
                remaining = hold.deadline - self._clock()
                if remaining <= 0:
                    return False
                change = self._table.next_change()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(change.wait(), min(remaining, RECHECK_SECONDS))
        finally:
            self._release(hold)

    def timed_out(self, hold: Hold) -> JSONResponse:
        seconds = self._settings.hold_timeout
        return error_response(
            503,
            f"The model `{hold.model}` is starting (scaled from zero): no replica was ready "
            f"within {seconds:g}s. Retry shortly.",
            "service_unavailable",
            code="model_starting",
            retry_after=self._settings.retry_after,
        )

    def full(self, model: str) -> JSONResponse:
        return error_response(
            429,
            f"The model `{model}` is starting (scaled from zero) and too many requests are "
            "already waiting for it. Retry shortly.",
            "rate_limit_error",
            code="model_starting_queue_full",
            retry_after=self._settings.retry_after,
        )

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the per-service task ---------------------------------------------------------------

    async def _wake(self, target: WakeTarget) -> None:
        """Once, then every wake_interval while requests wait for `target`."""
        try:
            while True:
                try:
                    await self._renew_demand(target)
                    await self._scale_from_zero(target)
                except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                    # Held requests still wait (a replica may come anyway); try again later.
                    hint = (
                        " (the gateway's ServiceAccount needs the RBAC of the kustomize "
                        "component manifests/gateway/scale-from-zero)"
                        if isinstance(error, ApiError) and error.status == 403
                        else ""
                    )
                    log.warning(
                        "could not wake %s/%s: %s%s",
                        target.namespace,
                        target.nimservice,
                        error,
                        hint,
                    )
                await asyncio.sleep(self._settings.wake_interval)
                if self._by_target[target] <= 0:
                    return
        finally:
            self._tasks.pop(target, None)

    async def _renew_demand(self, target: WakeTarget) -> None:
        now = datetime.datetime.now(tz=datetime.UTC)
        stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        path = f"{NIMSERVICE_API}/namespaces/{target.namespace}/nimservices/{target.nimservice}"
        await self._api.merge_patch(path, {"metadata": {"annotations": {DEMAND_ANNOTATION: stamp}}})

    async def _scale_from_zero(self, target: WakeTarget) -> None:
        for _ in range(3):  # a concurrent write (409): read again
            try:
                scale = await self._api.get(target.scale_path)
            except ApiError as error:
                if error.status == 500 and "does not exist" in str(error):
                    return  # a NIMService without spec.replicas runs its default 1 pod
                raise
            if int((scale.get("spec") or {}).get("replicas") or 0) != 0:
                return  # running or starting: nothing to wake
            patch = {
                "metadata": {"resourceVersion": scale["metadata"]["resourceVersion"]},
                "spec": {"replicas": 1},
            }
            try:
                await self._api.merge_patch(target.scale_path, patch)
            except ApiError as error:
                if error.status == 409:
                    continue
                raise
            log.info(
                "waking %s/%s for held requests: replicas 0 -> 1 (%s)",
                target.namespace,
                target.nimservice,
                target.scale_path,
            )
            return
