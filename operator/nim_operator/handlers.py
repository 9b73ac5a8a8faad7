"""kopf registrations, and nothing else: every handler delegates to `reconcile`.

Run with `nim-operator run -m nim_operator.handlers --standalone` (kopf's CLI, see
nim_operator.startup; `kopf run` works too) or `python -m nim_operator`.

Three ways in, one reconcile:
* create/update of a NIMService - at once, with kopf's retry semantics; resume (every
  NIMService, when a new process takes over) - queued in the background;
* a timer per NIMService - every NIM_OPERATOR_RECONCILE_INTERVAL seconds, to undo hand edits;
* NIMCaches, their download Jobs, and the NIMServices waiting for one: in
  nim_operator.handlers_nimcache;
* events of our Deployments, Services, ServiceAccounts, Pods and LeaderWorkerSets (where their
  CRD is installed) - a deleted or hand-edited child, a group that became ready,
  or a pod going into CrashLoopBackOff, re-reconciles its owner within a second, found through
  an in-memory set of NIMServices. These events also keep what timer ticks read instead of
  asking the API server: our pods (nim_operator.pod_cache) and whether each child is still
  as we applied it (nim_operator.child_records).

And one daemon per NIMService with `spec.autoscaling`: the built-in autoscaler, which evaluates
every `spec.autoscaling.interval` seconds (nim_operator.autoscaling) and stops when the field goes;
with `spec.scaleToZeroAfter` the same daemon only sets spec.replicas to 0 once the pods are idle.

With NIM_OPERATOR_LEADER_ELECTION, the startup handler first waits until this process holds the
Lease (nim_operator.leadership): kopf starts no watch, so no handler, before it returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

# Registers the NIMCache handlers (kopf collects them when the module is imported).
import nim_operator.handlers_nimcache  # noqa: F401
from nim_operator import API_GROUP, API_VERSION, PLURAL, leadership
from nim_operator.autoscaling.scaler import Autoscaler
from nim_operator.kube import ApiError, TransientApiError
from nim_operator.multinode import LWS_MISSING
from nim_operator.preflight import ClusterUnavailable, check_cluster
from nim_operator.reconcile import Logger, Outcome, Runtime, reconcile, reconcile_later
from nim_operator.render.labels import FIELD_MANAGER, INSTANCE_LABEL, MANAGED_BY_LABEL
from nim_operator.settings import Settings, configure_kopf

__all__ = ["SETTINGS"]

# Read at import: kopf takes the timer interval when the decorator runs.
SETTINGS = Settings()
NIMSERVICE = (API_GROUP, API_VERSION, PLURAL)
OUR_CHILDREN = {MANAGED_BY_LABEL: FIELD_MANAGER}
# How soon kopf retries a change handler after the API failed transiently.
API_RETRY_DELAY = 10.0
# When an autoscaling evaluation had nothing to do (no Deployment yet) or the API failed.
AUTOSCALING_RETRY_DELAY = 5.0


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_kopf(settings, SETTINGS)
    # Done already by nim_operator.cli, but not under plain `kopf run`: there kopf would retry
    # this handler every 60 s for ever; a PermanentError stops the operator.
    try:
        await check_cluster()
    except ClusterUnavailable as e:
        raise kopf.PermanentError(str(e)) from None
    if SETTINGS.leader_election and memo.get("leadership") is None:  # (not again on a retry)
        # Blocks a standby here, answering the liveness probe itself until it leads.
        memo.leadership = await leadership.lead(
            namespace=SETTINGS.lease_namespace,
            name=SETTINGS.lease_name,
            lease_duration=SETTINGS.lease_duration,
            renew_deadline=SETTINGS.renew_deadline,
            retry_period=SETTINGS.retry_period,
            liveness_endpoint=SETTINGS.liveness_endpoint,
        )

    def object_logger(body: Mapping[str, Any]) -> Logger:
        return kopf.LocalObjectLogger(body=kopf.Body(cast(kopf.RawBody, body)), settings=settings)

    memo.runtime = await Runtime.start(SETTINGS, object_logger=object_logger)
    memo.autoscaler = Autoscaler(memo.runtime, scrape_timeout=SETTINGS.scrape_timeout)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    try:
        autoscaler: Autoscaler | None = memo.get("autoscaler")
        if autoscaler is not None:
            await autoscaler.close()
        runtime: Runtime | None = memo.get("runtime")
        if runtime is not None:
            await runtime.close()
    finally:
        # Last, when nothing reconciles any more: a standby takes over at its next try.
        lead: leadership.Leadership | None = memo.get("leadership")
        if lead is not None:
            await lead.release()


@kopf.on.event(*NIMSERVICE)
async def track_nimservices(
    type: str | None, namespace: str | None, name: str, uid: str, memo: kopf.Memo, **_: Any
) -> None:
    """Which NIMServices exist, so a child event is only acted on when its owner is ours.

    Not a kopf index: kopf holds every handler until each watched namespace's index has been
    listed, and a namespace that matches a --namespace glob but is deleted before its listing
    ends would hold them for good (kopf 1.45 never drops that namespace's readiness flag).
    Async, though it awaits nothing: kopf runs a sync handler in a thread of its executor,
    a thread hop per NIMService event for a set update.
    """
    if namespace is not None:
        memo.runtime.track(namespace, name, uid, present=type != "DELETED")


@kopf.on.create(*NIMSERVICE)
@kopf.on.update(*NIMSERVICE)
async def reconcile_on_change(body: kopf.Body, memo: kopf.Memo, logger: Logger, **_: Any) -> None:
    try:
        outcome = await reconcile(memo.runtime, body, logger=logger)
    except TransientApiError as e:
        raise kopf.TemporaryError(str(e), delay=API_RETRY_DELAY) from e
    _raise_for(outcome)


@kopf.on.resume(*NIMSERVICE)
async def reconcile_on_resume(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    uid: str,
    memo: kopf.Memo,
    logger: Logger,
    **_: Any,
) -> None:
    """A new process takes over: queue a background run, which reads the NIMService itself.

    A restart resumes every NIMService at once. Run here, each of 1,000 would wait for its
    turn holding a kopf worker, its handler context and its body for the whole takeover (10-15
    MiB of the restart's RSS peak, see docs/benchmarks-operator.md). The queued run costs a
    GET of the NIMService; it reports a failure in the status, and the timer retries it.
    """
    if namespace is None or body["metadata"].get("deletionTimestamp"):
        return
    reconcile_later(memo.runtime, namespace, name, uid, logger=logger)


def _raise_for(outcome: Outcome | None) -> None:
    """kopf's retry semantics for a failed reconcile (its status is written already)."""
    if outcome is None or outcome.failure is None:
        return
    message = f"{outcome.failure.reason}: {outcome.failure.message}"
    if outcome.permanent:
        raise kopf.PermanentError(message)  # only an edit of the NIMService can help
    if outcome.failure.reason in ("SecretNotFound", "PVCNotFound", LWS_MISSING):
        raise kopf.TemporaryError(message, delay=SETTINGS.reconcile_interval)  # "not yet"


@kopf.timer(
    *NIMSERVICE,
    interval=SETTINGS.reconcile_interval,
    initial_delay=SETTINGS.reconcile_interval,
)
async def reconcile_periodically(
    body: kopf.Body, memo: kopf.Memo, logger: Logger, **_: Any
) -> None:
    """Level-triggered safety net; failures are in the status and the next tick retries."""
    try:
        await reconcile(memo.runtime, body, logger=logger, periodic=True)
    except TransientApiError as e:
        logger.warning("Periodic reconcile postponed: %s", e)


@kopf.on.event("apps", "v1", "deployments", labels=OUR_CHILDREN)
@kopf.on.event("v1", "services", labels=OUR_CHILDREN)
@kopf.on.event("v1", "serviceaccounts", labels=OUR_CHILDREN)
@kopf.on.event("v1", "pods", labels=OUR_CHILDREN)
@kopf.on.event("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", labels=OUR_CHILDREN)
async def reconcile_owner_of_child(
    body: kopf.Body,
    namespace: str | None,
    resource: kopf.Resource,
    type: str | None,
    memo: kopf.Memo,
    logger: Logger,
    **_: Any,
) -> None:
    runtime = memo.runtime
    if resource.plural == "pods":
        if runtime.pods is not None:
            runtime.pods.seen(type, dict(body))
    else:
        news = runtime.child_changed(resource.plural, type, body)
        if news == "echo":
            return  # our own apply: the run that applied saw this very version
        if news == "unknown" and type is None:
            return  # listed, and nothing we applied is known to have changed
    owner_name = body.get("metadata", {}).get("labels", {}).get(INSTANCE_LABEL, "")
    owner_uid = None if namespace is None else runtime.known_uid(namespace, owner_name)
    if namespace is None or owner_uid is None:
        return  # not (or no longer) a NIMService of ours
    if type is None and not runtime.has_read(owner_uid):
        # kopf's listing at startup, before any run of the owner has read anything: the run its
        # resume queues, still to come, reads the Deployment and the pods itself. (Listed
        # Deployments and pods used to queue a second run for each NIMService on a restart.)
        return
    # In the background: kopf's worker for this child is free for its next event at once.
    reconcile_later(runtime, namespace, owner_name, owner_uid, logger=logger)


def _autoscaled(spec: kopf.Spec, **_: Any) -> bool:
    # The built-in autoscaler, or a fixed count that scales to zero when idle.
    return bool(spec.get("autoscaling")) or spec.get("scaleToZeroAfter") is not None


# When the NIMService goes or spec.autoscaling is removed, an evaluation under way gets this
# long to finish before it is cancelled; kopf re-checks then (not after its 60 s default poll).
@kopf.daemon(*NIMSERVICE, when=_autoscaled, cancellation_backoff=1.0, cancellation_timeout=5.0)
async def autoscale(
    namespace: str | None,
    name: str,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    logger: Logger,
    **_: Any,
) -> None:
    """The built-in autoscaler of one NIMService (or its idle watch, for spec.scaleToZeroAfter);
    kopf stops it when both fields go."""
    assert namespace is not None  # NIMServices are namespaced
    while not stopped:
        interval = AUTOSCALING_RETRY_DELAY
        try:
            interval = await memo.autoscaler.evaluate(namespace, name, logger=logger) or interval
        except TransientApiError as e:
            logger.warning("Autoscaling evaluation postponed: %s", e)
        except ApiError as e:  # e.g. RBAC without deployments/scale: say so, keep trying
            logger.error("Autoscaling evaluation failed: %s", e)
        await stopped.wait(interval)


@kopf.on.delete(*NIMSERVICE, optional=True)
async def forget(uid: str, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Children go with the owner (ownerReferences); only our in-memory state is left."""
    memo.runtime.forget(uid)
    if memo.runtime.pods is not None and namespace is not None:
        memo.runtime.pods.forget((namespace, name))
    memo.autoscaler.forget(uid)
