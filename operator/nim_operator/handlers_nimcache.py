"""kopf registrations for NIMCaches (imported by nim_operator.handlers), and nothing else.

* create/update/resume of a NIMCache, and a timer - one level-triggered `reconcile_cache`;
* events of our download Jobs - the Job started, finished or failed: its NIMCache at once;
* events of NIMCaches themselves - when one's `status.state` changes, the NIMServices that mount
  it (`spec.storage.nimCache.name`) are reconciled at once, so a NIMService waiting for its
  cache starts within a second of the cache being Ready, not at its next timer tick.
"""

from __future__ import annotations

from typing import Any

import kopf

from nim_operator import API_GROUP, API_VERSION
from nim_operator.kube import TransientApiError
from nim_operator.nimcache import NIMCACHES, reconcile_cache
from nim_operator.reconcile import NIMSERVICES, Logger, Runtime, reconcile_later
from nim_operator.render.labels import FIELD_MANAGER, INSTANCE_LABEL, MANAGED_BY_LABEL, NAME_LABEL
from nim_operator.render.nimcache_job import CACHE_APP_NAME
from nim_operator.settings import Settings

__all__: list[str] = []

SETTINGS = Settings()
NIMCACHE = (API_GROUP, API_VERSION, "nimcaches")
DOWNLOAD_JOBS = {NAME_LABEL: CACHE_APP_NAME, MANAGED_BY_LABEL: FIELD_MANAGER}
API_RETRY_DELAY = 10.0
# Failures that another object can fix (a Secret or a claim created later): retried at the
# timer's pace; the others wait for an edit of the NIMCache.
_NOT_YET = ("SecretNotFound", "PVCNotFound")
# The last state seen of each NIMCache, in kopf's memo: only a change wakes its NIMServices.
_STATES = "nimcache_states"


@kopf.on.resume(*NIMCACHE)
@kopf.on.create(*NIMCACHE)
@kopf.on.update(*NIMCACHE)
async def reconcile_cache_on_change(
    body: kopf.Body, memo: kopf.Memo, logger: Logger, **_: Any
) -> None:
    try:
        outcome = await reconcile_cache(memo.runtime, body, logger=logger)
    except TransientApiError as e:
        raise kopf.TemporaryError(str(e), delay=API_RETRY_DELAY) from e
    if outcome is None or outcome.failure is None:
        return
    message = f"{outcome.failure.reason}: {outcome.failure.message}"
    if outcome.permanent:
        raise kopf.PermanentError(message)
    if outcome.failure.reason in _NOT_YET:
        raise kopf.TemporaryError(message, delay=SETTINGS.reconcile_interval)


@kopf.timer(
    *NIMCACHE, interval=SETTINGS.reconcile_interval, initial_delay=SETTINGS.reconcile_interval
)
async def reconcile_cache_periodically(
    body: kopf.Body, memo: kopf.Memo, logger: Logger, **_: Any
) -> None:
    """Puts back a deleted Job or claim; failures are in the status and the next tick retries."""
    try:
        await reconcile_cache(memo.runtime, body, logger=logger)
    except TransientApiError as e:
        logger.warning("Periodic reconcile postponed: %s", e)


async def _reconcile_named(runtime: Runtime, namespace: str, name: str, logger: Logger) -> None:
    try:
        body = await runtime.kube.get(NIMCACHES, namespace, name)
        if body is not None:
            await reconcile_cache(runtime, body, logger=logger)
    except TransientApiError as e:
        logger.warning("NIMCache reconcile postponed: %s", e)
    except Exception:  # nobody awaits a background run to see it fail: say it here
        logger.exception("NIMCache reconcile failed")


@kopf.on.event("batch", "v1", "jobs", labels=DOWNLOAD_JOBS)
async def reconcile_cache_of_job(
    body: kopf.Body,
    namespace: str | None,
    type: str | None,
    memo: kopf.Memo,
    logger: Logger,
    **_: Any,
) -> None:
    name = body.get("metadata", {}).get("labels", {}).get(INSTANCE_LABEL)
    if type is None or namespace is None or not name:
        return  # kopf's listing at startup: each NIMCache's resume reads its Job anyway
    # In the background: kopf's worker for this Job is free for its next event at once.
    memo.runtime.spawn(_reconcile_named(memo.runtime, namespace, name, logger))


@kopf.on.event(*NIMCACHE)
async def wake_nimservices(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    type: str | None,
    memo: kopf.Memo,
    logger: Logger,
    **_: Any,
) -> None:
    if namespace is None:
        return
    states: dict[tuple[str, str], str | None] = memo.setdefault(_STATES, {})
    state = None if type == "DELETED" else (body.get("status") or {}).get("state")
    known = (namespace, name) in states
    if known and states[(namespace, name)] == state:
        return
    states[(namespace, name)] = state
    if type == "DELETED":
        del states[(namespace, name)]
    if not known and type is None:
        return  # listed at startup: every NIMService is resumed anyway
    runtime: Runtime = memo.runtime
    try:
        services = await runtime.kube.list(NIMSERVICES, namespace)
    except TransientApiError as e:
        logger.warning("NIMServices of this NIMCache not woken: %s", e)
        return
    for service in services:
        spec = service.get("spec") or {}
        # spec.nimCache is NVIDIA's earlier place of storage.nimCache (models_nvidia_shapes).
        ref = (spec.get("storage") or {}).get("nimCache") or spec.get("nimCache") or {}
        if ref.get("name") == name:
            meta = service["metadata"]
            reconcile_later(runtime, namespace, meta["name"], meta["uid"], logger=logger)


@kopf.on.delete(*NIMCACHE, optional=True)
async def forget_cache(uid: str, memo: kopf.Memo, **_: Any) -> None:
    """The Job and a created claim go with the NIMCache (ownerReferences)."""
    memo.runtime.forget(uid)
