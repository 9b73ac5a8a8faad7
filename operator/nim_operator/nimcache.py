"""Level-triggered reconciliation of one NIMCache, and what a NIMService needs from one.

`reconcile_cache()` reads the NIMCache as it is and makes the cluster match:

1. Parse the spec (pydantic). Invalid -> Failed with the reason, nothing applied.
2. Check what it refers to: the source's authSecret (metadata only) and an existing claim.
3. Apply the claim when `storage.pvc.create`; apply the download Job when it is absent. A Job's
   pod template cannot change, so a Job rendered from an older spec (its digest annotation
   differs) is deleted, and the next run (its DELETED event) creates the new one.
4. Read the Job and, once it has finished, its pods' termination messages; write the status
   (state Pending / InProgress / Ready / Failed, conditions Ready and Failed) if it changed.

Runs for one NIMCache are serialized by the same per-object lock NIMServices use.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from nim_operator import API_GROUP, API_VERSION, events
from nim_operator.conditions import Problem
from nim_operator.kube import ApiError, KubeClient, ResourceKind, TransientApiError
from nim_operator.models_nimcache import NVIDIA_ONLY_STATES, NIMCacheSpec, cache_name_problem
from nim_operator.nimcache_status import CacheObservation, compute_cache_status
from nim_operator.reconcile import Logger, Runtime
from nim_operator.render.labels import FIELD_MANAGER
from nim_operator.render.nimcache_job import (
    DIGEST_ANNOTATION,
    CacheOwner,
    job_name,
    render_cache_pvc,
    render_download_job,
)
from nim_operator.render.nimcache_ngc import asked_profiles

__all__ = ["NIMCACHES", "CacheOutcome", "reconcile_cache"]

NIMCACHES = ResourceKind(f"{API_GROUP}/{API_VERSION}", "nimcaches")
JOBS = ResourceKind("batch/v1", "jobs")
PODS = ResourceKind("v1", "pods")
PVCS = ResourceKind("v1", "persistentvolumeclaims")
SECRETS = ResourceKind("v1", "secrets")
# Failures only an edit can fix (kopf does not retry them until the NIMCache changes).
_PERMANENT = {"InvalidSpec", "InvalidName", "ChildRejected"}


@dataclass(frozen=True)
class CacheOutcome:
    status: dict[str, Any]
    failure: Problem | None = None

    @property
    def permanent(self) -> bool:
        return self.failure is not None and self.failure.reason in _PERMANENT


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(owner: CacheOwner, body: Mapping[str, Any]) -> NIMCacheSpec | Problem:
    """The spec, or why not; messages name fields, never values."""
    if (problem := cache_name_problem(owner.name)) is not None:
        return Problem("InvalidName", problem)
    try:
        return NIMCacheSpec.from_body(dict(body.get("spec") or {}))
    except ValidationError as e:
        details: dict[str, str] = {}
        for error in e.errors(include_url=False, include_input=False):
            path = ".".join(["spec", *(str(part) for part in error["loc"])])
            details.setdefault(path, error["msg"].removeprefix("Value error, "))
        return Problem("InvalidSpec", "; ".join(f"{k}: {v}" for k, v in details.items())[:1024])


async def _missing(kube: KubeClient, owner: CacheOwner, spec: NIMCacheSpec) -> Problem | None:
    ns = owner.namespace
    auth = spec.auth_secret()
    if auth is not None and await kube.get(SECRETS, ns, auth[1], metadata_only=True) is None:
        field, secret, key = auth
        return Problem(
            "SecretNotFound",
            f'{field} "{secret}" not found in namespace {ns}: create it with an {key} key',
        )
    claim = spec.pvc_name(owner.name)
    if spec.claim.create or await kube.get(PVCS, ns, claim, metadata_only=True) is not None:
        return None
    if spec.claim.name:
        where = f'storage.pvc.name "{claim}" not found'
    else:
        # What NVIDIA's operator does with neither a name nor create: fill `<name>-pvc`.
        where = (
            "storage.pvc names no claim and creates none, so the NIMCache fills the existing "
            f'claim "{claim}" (as NVIDIA\'s operator does), which is not found'
        )
    return Problem(
        "PVCNotFound",
        f"{where} in namespace {ns}: create the claim, or set storage.pvc.create with a size",
    )


async def _sync_job(
    kube: KubeClient, owner: CacheOwner, spec: NIMCacheSpec
) -> tuple[Mapping[str, Any] | None, bool]:
    """The live Job (applied if absent), and whether an outdated one is being replaced."""
    manifest = render_download_job(owner, spec)
    name = manifest["metadata"]["name"]
    live = await kube.get(JOBS, owner.namespace, name)
    if live is not None:
        meta = live.get("metadata") or {}
        ours = any(r.get("uid") == owner.uid for r in meta.get("ownerReferences") or [])
        digest = (meta.get("annotations") or {}).get(DIGEST_ANNOTATION)
        if digest == manifest["metadata"]["annotations"][DIGEST_ANNOTATION]:
            return live, False
        if ours and not meta.get("deletionTimestamp"):
            await kube.delete(JOBS, owner.namespace, name, uid=meta.get("uid"))
        return None, True
    applied = await kube.apply(JOBS, manifest, field_manager=FIELD_MANAGER, force=True)
    return applied, False


async def _finished_pods(
    kube: KubeClient, job: Mapping[str, Any], previous: Mapping[str, Any], *, nim_image: bool
) -> list[dict[str, Any]]:
    """The Job's pods once it has finished (their termination messages say what happened).

    Not again once the status says what the finished Job cached: a timer tick of a Ready
    NIMCache makes no pod list. (A new Job passes through Pending first, which clears it.) A
    NIM image (`ngc`) reports nothing of ours on success, so its Ready status is complete.
    """
    conditions = (job.get("status") or {}).get("conditions") or []
    if not any(c.get("status") == "True" for c in conditions):
        return []
    if previous.get("state") == "Ready" and (
        nim_image or (previous.get("model") or {}).get("path")
    ):
        return []
    meta = job.get("metadata") or {}
    selector = f"batch.kubernetes.io/controller-uid={meta.get('uid')}"
    return await kube.list(PODS, meta.get("namespace"), label_selector=selector)


def _nim_asked(spec: NIMCacheSpec | None) -> dict[str, Any]:
    """What an ngc source asked for, for the status once its Job completes."""
    if spec is None or spec.source.ngc is None:
        return {}
    ngc = spec.source.ngc
    return {
        "nim_model": ngc.model_endpoint or ngc.model_puller,
        "nim_profiles": asked_profiles(ngc),
    }


async def reconcile_cache(
    runtime: Runtime, body: Mapping[str, Any], *, logger: Logger
) -> CacheOutcome | None:
    """Make the cluster match the NIMCache `body`; None when it is being deleted."""
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return None  # the Job and a created claim go with it (ownerReferences)
    owner = CacheOwner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
    async with runtime.slot(owner.uid).lock, runtime.turn():
        kube = runtime.kube
        parsed = _parse(owner, body)
        spec = parsed if isinstance(parsed, NIMCacheSpec) else None
        problem = parsed if isinstance(parsed, Problem) else None
        job: Mapping[str, Any] | None = None
        pods: list[dict[str, Any]] = []
        replacing = False
        if spec is not None:
            problem = await _missing(kube, owner, spec)
        if spec is not None and problem is None:
            try:
                if (claim := render_cache_pvc(owner, spec)) is not None:
                    await kube.apply(PVCS, claim, field_manager=FIELD_MANAGER, force=True)
                job, replacing = await _sync_job(kube, owner, spec)
            except TransientApiError:
                raise
            except ApiError as e:
                problem = Problem("ChildRejected", f"{e.reason}: {e}"[:1024])
            if job is not None:
                previous = runtime.slot(owner.uid).last_status or body.get("status") or {}
                pods = await _finished_pods(
                    kube, job, previous, nim_image=spec.source.ngc is not None
                )
        obs = CacheObservation(
            generation=int(meta.get("generation") or 0),
            pvc=spec.pvc_name(owner.name) if spec is not None else None,
            job_name=job_name(owner.name) if spec is not None else None,
            problem=problem,
            job=job,
            pods=pods,
            replacing=replacing,
            **_nim_asked(spec),
        )
        status = await _write_status(runtime, body, owner, obs, logger=logger)
    return CacheOutcome(status=status, failure=problem)


async def _write_status(
    runtime: Runtime,
    body: Mapping[str, Any],
    owner: CacheOwner,
    obs: CacheObservation,
    *,
    logger: Logger,
) -> dict[str, Any]:
    slot = runtime.slot(owner.uid)
    stored = dict(body.get("status") or {})
    previous = slot.last_status or stored
    status = compute_cache_status(obs, previous, now=_now())
    # A status NVIDIA's operator wrote (restored with the object) is replaced even when ours has
    # not changed since our last write.
    nvidias = stored.get("type") is not None or stored.get("state") in NVIDIA_ONLY_STATES
    if not nvidias and status in (stored, slot.last_status):
        return status  # (kopf's body can lag behind our own last write: both count)
    # `type` is NVIDIA's (its probe of the NIM image), never ours: a restored one is cleared.
    cleared = ("model", "profiles", "pvc", "job", "type")
    patch = {"status": {**dict.fromkeys(cleared), **status}}
    written = await runtime.kube.merge_patch(
        NIMCACHES,
        owner.namespace,
        owner.name,
        patch,
        subresource="status",
        field_manager=FIELD_MANAGER,
    )
    if written is None:
        return status
    slot.last_status = status
    notes = events.transition_events(previous.get("conditions") or [], status["conditions"])
    runtime.post_events(body, notes)
    for note in notes:
        logger.info("%s %s: %s", note.type, note.reason, note.message)
    return status
