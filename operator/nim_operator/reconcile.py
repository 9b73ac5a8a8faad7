"""Level-triggered reconciliation of one NIMService: the only place that changes the cluster.

`reconcile()` does not care what happened (created, updated, resumed, timer, a child changed):
it reads the NIMService as it is, renders every child, makes the cluster match, observes the
result and writes the status. Running it twice in a row is a no-op the second time.

1. Parse the spec (pydantic). Invalid -> status Failed/InvalidSpec, nothing applied.
2. Check what the spec refers to and the operator does not create: the authSecret, an existing
   PVC. Missing -> status Failed, nothing applied (the timer checks again).
3. Delete children whose feature is off (only those with our controller ownerReference), then
   server-side apply the rest, in the renderers' order, with our field manager and force.
   A timer tick skips the applies the watch proves to be no-ops (nim_operator.child_records).
4. Read the Deployment and its Pods, compute the status (`conditions`), write it to the status
   subresource if it changed, and post an Event per condition transition.

Runs for the same NIMService are serialized by a per-object lock (kopf runs change handlers,
the timer and child-event handlers concurrently).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from nim_operator import (
    API_GROUP,
    API_VERSION,
    PLURAL,
    child_records,
    compute_domain,
    events,
    exposure,
    multinode,
)
from nim_operator.conditions import (
    AUTOSCALER_CONDITION_TYPES,
    OWNED_STATUS_FIELDS,
    ConditionReport,
    Observation,
    Problem,
    compute_status,
    label_selector,
)
from nim_operator.dra import (
    CLAIM_TEMPLATES,
    claim_template_children,
    delete_unwanted_claim_templates,
    dra_served,
    dra_unavailable,
)
from nim_operator.dra_status import observe_dra_statuses
from nim_operator.gateway_status import GatewayDirectory, routed_condition
from nim_operator.heap import HeapTrimmer, libc_malloc_trim
from nim_operator.kube import ApiError, CapabilityCache, KubeClient, ResourceKind, TransientApiError
from nim_operator.models import NIMServiceSpec, service_name_problem
from nim_operator.nimcache_mount import cached_model_spec
from nim_operator.pod_cache import PodCache
from nim_operator.render import FIELD_MANAGER, ChildRef, Owner, render_children
from nim_operator.settings import Settings

__all__ = [
    "HANDOVER_MANAGER",
    "NIMSERVICES",
    "Logger",
    "Outcome",
    "Runtime",
    "reconcile",
    "reconcile_later",
    "reconcile_soon",
]

NIMSERVICES = ResourceKind(f"{API_GROUP}/{API_VERSION}", PLURAL)
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
PODS = ResourceKind("v1", "pods")
SECRETS = ResourceKind("v1", "secrets")
PVCS = ResourceKind("v1", "persistentvolumeclaims")
SERVICE_MONITORS = ("monitoring.coreos.com/v1", "servicemonitors")
NIMCACHES = ResourceKind(f"{API_GROUP}/{API_VERSION}", "nimcaches")
# The child that runs the server: the Deployment, or with spec.multiNode the LeaderWorkerSet.
WORKLOAD_KINDS = ("Deployment", "LeaderWorkerSet")

# A second field manager that holds Deployment.spec.replicas for the moment between "we stop
# declaring it" and "the HPA writes it" (see `_hand_over_replicas`).
HANDOVER_MANAGER = f"{FIELD_MANAGER}-replicas-handover"
# A timer tick takes the pods from the watch, but lists them for real at least this often
# (in ticks), so a pod whose DELETED event a watch reconnect lost cannot linger.
POD_LIST_EVERY_TICKS = 10
# Likewise a run skips the applies that the watch says would change nothing
# (nim_operator.child_records), but applies everything at least every this many runs in a row.
APPLY_EVERY_RUNS = 10
# At most one heap trim per this many seconds (timer ticks end a "busy spell" every few seconds).
HEAP_TRIM_INTERVAL = 60.0
# How many of its own status writes' resourceVersions a NIMService's slot remembers: kopf's
# stale body is the version of one of the last few (a change handler's write, then a child
# event's one or two before kopf's watch catches up).
STATUS_VERSIONS_KEPT = 4


@dataclass
class _OwnerSlot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The status this operator last wrote: fresher than the body a timer or an index holds,
    # so transitions (lastTransitionTime, Events) are judged against what is really stored.
    last_status: dict[str, Any] | None = None
    # The resourceVersions our last few status writes made (see STATUS_VERSIONS_KEPT): a body
    # of one of them carries a status this process wrote, nobody else's.
    written_versions: tuple[str, ...] = ()
    # The built-in autoscaler's conditions from its last evaluation (nim_operator.autoscaling);
    # None until it has evaluated since the operator started.
    autoscaler_conditions: tuple[ConditionReport, ...] | None = None
    # Children of features that are off, found absent (or not ours) since this process started.
    # Only our own apply can bring one of ours back, and that forgets the entry, so they are not
    # looked for again on every run: a timer tick costs no GET per optional child.
    absent: set[ChildRef] = field(default_factory=set)
    # What we last applied of each watched child, while the watch says it is still live.
    records: dict[ChildRef, child_records.AppliedChild] = field(default_factory=dict)
    # Runs in a row that skipped applies on the watch's word (see APPLY_EVERY_RUNS).
    trusted_runs: int = 0
    # Whether a run has begun reading the cluster since this process started.
    has_read: bool = False


# What a child's watch event says about our last apply of it: the very version it returned
# ("echo"), another version or a deletion ("changed"), or nothing (no apply recorded).
ChildNews = Literal["echo", "changed", "unknown"]

EventPoster = Callable[[Mapping[str, Any], Sequence[events.EventNote]], None]
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]
# The logger for a run about one NIMService, given its body (kopf's per-object logger).
LoggerFactory = Callable[[Mapping[str, Any]], Logger]


@dataclass
class Runtime:
    """What reconcile needs across calls; lives in kopf's `memo` for one operator run."""

    kube: KubeClient
    settings: Settings
    capabilities: CapabilityCache
    # kopf's poster in the operator; tests outside kopf pass a recorder.
    post_events: EventPoster = events.post
    # Our pods as kopf's watch reports them (the pod event handler feeds it); timer ticks read
    # it instead of listing. None: always list (tests that run reconcile without kopf).
    pods: PodCache | None = None
    # True when kopf's watches report changes of our Deployments, Services and ServiceAccounts
    # (`child_changed`), so that a timer tick may skip applies they say are no-ops.
    watches_children: bool = False
    # Names a background run's NIMService in its log lines; None: the caller's logger (which
    # names the child whose event queued the run).
    object_logger: LoggerFactory | None = None
    _slots: dict[str, _OwnerSlot] = field(default_factory=dict)
    # Bounds the runs in progress (Settings.max_concurrent_reconciles); made on first use, in
    # the event loop that runs them.
    _running: asyncio.Semaphore | None = None
    # Gives the heap back after a busy spell (nim_operator.heap); None: never (tests).
    heap: HeapTrimmer | None = None
    # The cluster's nim-gateways, for the GatewayRouted condition; None: no such condition.
    gateways: GatewayDirectory | None = None
    # Runs holding or waiting for a turn.
    busy: int = field(default=0, init=False)
    # uid of each NIMService the watch has reported and not seen deleted, by (namespace, name).
    _known: dict[tuple[str, str], str] = field(default_factory=dict)
    # "namespace/name" of NIMServices with a child-triggered reconcile waiting to start.
    _queued: set[str] = field(default_factory=set)
    # Those waiting and running reconciles (see `reconcile_later`), cancelled at close.
    _background: set[asyncio.Task[Outcome | None]] = field(default_factory=set)

    @classmethod
    async def start(cls, settings: Settings, object_logger: LoggerFactory | None = None) -> Runtime:
        kube = await KubeClient.connect(timeout=settings.api_timeout, retries=settings.api_retries)
        return cls(
            kube,
            settings,
            CapabilityCache(kube, ttl=settings.capability_ttl),
            pods=PodCache(max_age=settings.reconcile_interval * POD_LIST_EVERY_TICKS),
            watches_children=True,
            object_logger=object_logger,
            heap=HeapTrimmer(HEAP_TRIM_INTERVAL, trim=libc_malloc_trim()),
            gateways=GatewayDirectory(kube, ttl=settings.gateway_ttl),
        )

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.kube.close()

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold one of the turns; when the last run in progress ends, the heap is trimmed."""
        if self._running is None:
            self._running = asyncio.Semaphore(self.settings.max_concurrent_reconciles)
        self.busy += 1
        try:
            async with self._running:
                yield
        finally:
            self.busy -= 1
            if self.busy == 0 and self.heap is not None:
                self.heap.idle()

    def slot(self, uid: str) -> _OwnerSlot:
        return self._slots.setdefault(uid, _OwnerSlot())

    def forget(self, uid: str) -> None:
        self._slots.pop(uid, None)

    def has_read(self, uid: str) -> bool:
        """Whether a run of this NIMService has begun reading the cluster in this process.

        Until one has, any run still to come reads what a watch event could tell it.
        """
        slot = self._slots.get(uid)
        return slot is not None and slot.has_read

    def child_changed(
        self, plural: str, event_type: str | None, body: Mapping[str, Any]
    ) -> ChildNews:
        """Take a watch event of one of our children: what it says about our last apply."""
        uid = child_records.controller_uid(body)
        slot = self._slots.get(uid) if uid is not None else None
        if slot is None:
            return "unknown"
        name = (body.get("metadata") or {}).get("name")
        for ref, child in list(slot.records.items()):
            if ref.plural == plural and ref.name == name:
                if child_records.still_live(child, event_type, body):
                    return "echo"
                del slot.records[ref]
                return "changed"
        return "unknown"

    def track(self, namespace: str, name: str, uid: str, *, present: bool) -> None:
        if present:
            self._known[namespace, name] = uid
        elif self._known.get((namespace, name)) == uid:
            del self._known[namespace, name]

    def known_uid(self, namespace: str, name: str) -> str | None:
        """The uid of our NIMService `namespace/name`, if the watch has reported it."""
        return self._known.get((namespace, name))

    def enqueue(self, key: str) -> bool:
        """Mark a run for `key` as waiting; False if one already is."""
        if key in self._queued:
            return False
        self._queued.add(key)
        return True

    def dequeue(self, key: str) -> None:
        self._queued.discard(key)

    def spawn(self, run: Coroutine[Any, Any, Outcome | None]) -> asyncio.Task[Outcome | None]:
        """Run `run` in the background, until it ends or the runtime closes."""
        task = asyncio.create_task(run)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


@dataclass(frozen=True)
class Outcome:
    """What a reconcile found; handlers turn a failure into kopf's retry semantics."""

    status: dict[str, Any]
    failure: Problem | None = None
    # True when only a change of the NIMService itself can fix the failure.
    permanent: bool = False


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clip(message: str, limit: int = 1024) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _kind(ref: ChildRef) -> ResourceKind:
    return ResourceKind(ref.api_version, ref.plural)


def _parse_spec(owner: Owner, body: Mapping[str, Any]) -> NIMServiceSpec | Problem:
    """The validated spec, or why there is none. Messages name fields, never values."""
    if (problem := service_name_problem(owner.name)) is not None:
        return Problem("InvalidName", problem)
    spec = dict(body.get("spec") or {})
    try:
        return NIMServiceSpec.from_body(spec)
    except ValidationError as e:
        # e.errors() rather than str(e): str(e) quotes the input, which may be a literal
        # NGC_API_KEY the validator is refusing.
        details: dict[str, str] = {}
        for error in e.errors(include_url=False, include_input=False):
            # The first reason per field: a union (int or quantity string) fails once per arm.
            details.setdefault(_field_path(spec, error["loc"]), error["msg"])
        return Problem("InvalidSpec", _clip("; ".join(f"{k}: {v}" for k, v in details.items())))


def _field_path(spec: Mapping[str, Any], loc: Sequence[int | str]) -> str:
    """`spec.env[0].name`, as the API server writes paths; pydantic's union-arm tags dropped."""
    path, node = "spec", spec
    for part in loc:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            path, node = f"{path}[{part}]", node[part]
        elif isinstance(node, Mapping) and isinstance(part, str) and part in node:
            path, node = f"{path}.{part}", node[part]
        elif not isinstance(node, Mapping | list):
            continue  # a tag naming which type of a union failed, not a field
        else:
            path = f"{path}.{part}"  # a missing required field
            node = {}
    return path


async def _missing_dependency(
    kube: KubeClient, owner: Owner, spec: NIMServiceSpec
) -> Problem | None:
    """What the spec refers to but the operator does not create, when it is not there.

    Metadata-only reads: the operator needs to know the Secret exists, not what it holds.
    """
    ns = owner.namespace
    secret = spec.auth_secret
    if secret and await kube.get(SECRETS, ns, secret, metadata_only=True) is None:
        return Problem(
            "SecretNotFound",
            f'authSecret "{secret}" not found in namespace {ns}: '
            "create it with an NGC_API_KEY key (and HF_TOKEN for gated models)",
        )
    api_key = spec.api_key_secret
    if api_key and await kube.get(SECRETS, ns, api_key.name, metadata_only=True) is None:
        return Problem(
            "SecretNotFound",
            f'apiKeySecret "{api_key.name}" not found in namespace {ns}: '
            f"create it with the server's API key under the key {api_key.key}",
        )
    pvc = spec.storage.pvc
    claim = pvc.name if pvc is not None and not pvc.create else None
    if claim and await kube.get(PVCS, ns, claim, metadata_only=True) is None:
        return Problem(
            "PVCNotFound",
            f'storage.pvc.name "{claim}" not found in namespace {ns}: '
            "create the claim, or set storage.pvc.create with a size",
        )
    return None


async def _mount_cache(
    kube: KubeClient, owner: Owner, spec: NIMServiceSpec
) -> NIMServiceSpec | Problem:
    """storage.nimCache: the spec to render, with the NIMCache's claim and model, or why not."""
    # from_body leaves storage.nimCache only when it names a NIMCache (models_nvidia_shapes).
    assert spec.storage.nim_cache is not None
    assert spec.storage.nim_cache.name
    cache = await kube.get(NIMCACHES, owner.namespace, spec.storage.nim_cache.name)
    return cached_model_spec(spec, cache, namespace=owner.namespace)


def _controlled_by(obj: Mapping[str, Any], owner: Owner) -> bool:
    return any(
        ref.get("uid") == owner.uid and ref.get("controller")
        for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )


def _manager_applies_replicas(deployment: Mapping[str, Any], manager: str) -> bool:
    for entry in deployment.get("metadata", {}).get("managedFields") or []:
        ours = entry.get("manager") == manager and entry.get("operation") == "Apply"
        if ours and "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {}):
            return True
    return False


async def _hand_over_replicas(kube: KubeClient, ref: ChildRef, namespace: str) -> None:
    """Keep the replica count when our apply stops declaring it because an HPA takes over.

    With server-side apply, a field that one manager applied alone is *removed* when that
    manager applies again without it - for Deployment.spec.replicas, the API server then
    defaults it to 1, scaling a busy service down before the HPA reacts. So, while we still own
    it, a second manager applies just the current value; our next apply drops the field, the
    second manager keeps it at its value, and the HPA's first scale write takes it over for good
    (this is the ownership transfer described in the Kubernetes server-side apply docs).

    Simpler options lose: re-applying the live value on every reconcile keeps us an owner and
    overwrites whatever the HPA chose between our read and our write.
    """
    live = await kube.get(DEPLOYMENTS, namespace, ref.name)
    if live is None or not _manager_applies_replicas(live, FIELD_MANAGER):
        return
    replicas = live.get("spec", {}).get("replicas")
    if replicas is None:
        return
    keep = {
        "apiVersion": ref.api_version,
        "kind": ref.kind,
        "metadata": {"name": ref.name, "namespace": namespace},
        "spec": {"replicas": replicas},
    }
    await kube.apply(DEPLOYMENTS, keep, field_manager=HANDOVER_MANAGER)


def _trusts_watch(runtime: Runtime, slot: _OwnerSlot) -> bool:
    """Whether this run may skip applies the watch says are no-ops; counts such runs.

    Any run, not only a timer tick: a child event's run re-applies the child it is about (its
    record went with the event), a spec change changes the digests, and the create handler kopf
    runs again on a stale body (its watch lagging behind a busy API server) finds nothing to do.
    """
    if not (runtime.watches_children and slot.records) or slot.trusted_runs >= APPLY_EVERY_RUNS:
        slot.trusted_runs = 0
        return False
    slot.trusted_runs += 1
    return True


async def _sync_children(
    runtime: Runtime,
    owner: Owner,
    spec: NIMServiceSpec,
    *,
    service_monitors: bool,
    gateway: exposure.GatewaySupport,
    previous_service: str | None,
    claim_templates: bool = False,
    leader_worker_sets: bool = False,
    compute_domains: bool = False,
    compute_domain_channel: str | None = None,
) -> Mapping[str, Any] | None:
    """Delete what is off, apply the rest; the workload (the Deployment, or with spec.multiNode
    the LeaderWorkerSet) as the apply left it (None if none)."""
    kube = runtime.kube
    slot = runtime.slot(owner.uid)
    absent = slot.absent
    trust_watch = _trusts_watch(runtime, slot)
    deployment: Mapping[str, Any] | None = None
    # A switch to or from spec.multiNode: the old shape's workload serves until the new one can.
    keep = await multinode.workload_to_keep(kube, owner, spec, leader_worker_sets, absent)
    children = render_children(
        owner,
        spec,
        replicas=spec.desired_replicas(),
        service_monitor_supported=service_monitors,
        http_routes_supported=gateway.http_routes,
        grpc_routes_supported=gateway.grpc_routes,
        inference_pools_supported=gateway.inference_pools,
        previous_service=previous_service,
        leader_worker_sets_supported=leader_worker_sets,
        compute_domains_supported=compute_domains,
        compute_domain_channel=compute_domain_channel,
        keep_workload=keep,
    )
    if claim_templates:
        # spec.draResources' generated ResourceClaimTemplates, before the pods that use them.
        children = [*claim_template_children(owner, spec), *children]
    # Deletions first: an HPA being switched off must be gone before the Deployment's replica
    # count is enforced again, or it could rescale in between.
    for ref, manifest in children:
        if manifest is None and ref not in absent:
            current = await kube.get(_kind(ref), owner.namespace, ref.name, metadata_only=True)
            # Only what we control: a retained PVC or a user's object of the same name stays.
            if current is not None and _controlled_by(current, owner):
                uid = current["metadata"].get("uid")
                await kube.delete(_kind(ref), owner.namespace, ref.name, uid=uid)
            absent.add(ref)
    for ref, manifest in children:
        if manifest is None:
            slot.records.pop(ref, None)
            continue
        digest = child_records.manifest_digest(manifest)
        known = slot.records.get(ref)
        # The server's workload is named like the NIMService (the endpoint picker's is not).
        server_workload = ref.kind in WORKLOAD_KINDS and ref.name == owner.name
        if trust_watch and known is not None and known.digest == digest:
            if server_workload:
                deployment = known.body
            continue  # the same manifest, and nothing has changed the object since
        absent.discard(ref)  # before the apply: should it fail half-way, look again next time
        slot.records.pop(ref, None)
        if server_workload and ref.kind == "Deployment" and spec.desired_replicas() is None:
            # An HPA or the built-in autoscaler owns the count from now on.
            await _hand_over_replicas(kube, ref, owner.namespace)
        live = await kube.apply(_kind(ref), manifest, field_manager=FIELD_MANAGER, force=True)
        if runtime.watches_children and (child := child_records.record(ref.plural, digest, live)):
            slot.records[ref] = child
        if server_workload:
            deployment = live
    if claim_templates:
        wanted = {ref.name for ref, _ in children if ref.plural == CLAIM_TEMPLATES.plural}
        await delete_unwanted_claim_templates(kube, owner, wanted, absent)
    return deployment


async def _observe(
    runtime: Runtime,
    owner: Owner,
    applied: Mapping[str, Any] | None,
    *,
    periodic: bool,
    multi_node: bool = False,
) -> tuple[Mapping[str, Any] | None, list[Any]]:
    """The Deployment and its Pods; with `multi_node`, the LeaderWorkerSet in the Deployment's
    place (nim_operator.multinode.as_workload) and the pods of all its groups.

    `applied` is the Deployment our apply just answered with: the API server's state after our
    write, as fresh as a GET would be (anything that changes it later sends an event, which
    brings another run), so the GET is saved. A `periodic` run (a timer tick) takes the pods
    from the watch when they were listed recently enough (nim_operator.pod_cache).
    """
    kube = runtime.kube
    workload = multinode.LEADER_WORKER_SETS if multi_node else DEPLOYMENTS
    deployment = applied or await kube.get(workload, owner.namespace, owner.name)
    if deployment is not None and not _controlled_by(deployment, owner):
        deployment = None  # someone else's Deployment of the same name says nothing about us
    if deployment is not None and multi_node:
        deployment = multinode.as_workload(deployment)
    key = (owner.namespace, owner.name)
    cache = runtime.pods
    cached = cache.fresh(key) if cache is not None and periodic else None
    if cached is not None:
        return deployment, cached
    pods = await kube.list(PODS, owner.namespace, label_selector=label_selector(owner.name))
    if cache is not None:
        cache.listed(key, pods)
    return deployment, pods


def _autoscaler_conditions(
    slot: _OwnerSlot, spec: NIMServiceSpec | None, stored: Mapping[str, Any]
) -> tuple[ConditionReport, ...]:
    """ScalingActive/ScalingLimited while the built-in autoscaler is on, else none."""
    if spec is None or not spec.autoscaling_enabled():
        return ()
    if slot.autoscaler_conditions is not None:
        return slot.autoscaler_conditions
    # Not evaluated since this operator started: keep what the status says until it has.
    previous = (slot.last_status or stored).get("conditions") or []
    return tuple(
        ConditionReport(c["type"], c["status"], c["reason"], c.get("message", ""))
        for c in previous
        if c.get("type") in AUTOSCALER_CONDITION_TYPES
    )


def _owned(status: Mapping[str, Any]) -> dict[str, Any]:
    return {key: status.get(key) for key in OWNED_STATUS_FIELDS}


def _version(obj: Mapping[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion") or None


async def _write_status(
    runtime: Runtime,
    body: Mapping[str, Any],
    owner: Owner,
    obs: Observation,
    *,
    logger: Logger,
    periodic: bool,
) -> dict[str, Any]:
    slot = runtime.slot(owner.uid)
    stored = dict(body.get("status") or {})
    previous = slot.last_status or stored
    status = compute_status(obs, previous, now=_now())
    # The status is written when it differs from what this process last wrote, or from the
    # stored one (someone else may have changed it). But kopf's body lags behind this process's
    # own status writes while kopf's watch is behind (minutes, in a burst of 1,000): a timer
    # tick gets kopf's latest body, and kopf repeats a change handler on a body that predates
    # its own progress patch. Such a body's "stored" status is one this process has overwritten
    # already, and comparing with it wrote the same status again, a no-op for the API server
    # (3,366 of 6,023 status patches in such a burst, then 1,422 of 4,177 once ticks no longer
    # did). So a tick trusts what this process wrote, and so does any run whose body is a
    # version one of our own status writes made (an edit by anyone else makes a new version).
    # Any other run (a change handler on a newer body, a child event's fresh read) still
    # compares with the stored status and puts back one changed by someone else.
    ours = periodic or _version(body) in slot.written_versions
    compare_stored = not (ours and slot.last_status is not None)
    # status.autoscaling is the built-in autoscaler's; once it is switched off, it goes.
    stale_autoscaling = (
        obs.spec is not None
        and not obs.spec.autoscaling_enabled()
        and stored.get("autoscaling") is not None
    )
    owned = _owned(status)
    differs = owned != _owned(previous) or (compare_stored and owned != _owned(stored))
    if differs or stale_autoscaling:
        # Merge patch: fields we no longer report are nulled; fields of other writers stay.
        patch = {"status": {**dict.fromkeys(OWNED_STATUS_FIELDS), **status}}
        # A merge patch merges nested maps too: a model field no longer reported (externalEndpoint
        # once the Ingress goes) is nulled, or the stored one would stay.
        if isinstance(stored.get("model"), dict) and status.get("model") is not None:
            patch["status"]["model"] = {**dict.fromkeys(stored["model"]), **status["model"]}
        if stale_autoscaling:
            patch["status"]["autoscaling"] = None
        written = await runtime.kube.merge_patch(
            NIMSERVICES,
            owner.namespace,
            owner.name,
            patch,
            subresource="status",
            field_manager=FIELD_MANAGER,
        )
        if written is None:
            return status  # the NIMService is gone; nothing to report to
        slot.last_status = status
        if version := _version(written):
            slot.written_versions = (*slot.written_versions, version)[-STATUS_VERSIONS_KEPT:]
        notes = events.transition_events(previous.get("conditions") or [], status["conditions"])
        runtime.post_events(body, notes)
        for note in notes:
            logger.info("%s %s: %s", note.type, note.reason, note.message)
    return status


async def reconcile(
    runtime: Runtime,
    body: Mapping[str, Any],
    *,
    logger: Logger,
    periodic: bool = False,
) -> Outcome | None:
    """Make the cluster match the NIMService `body`; None when it is being deleted.

    `periodic` marks a timer tick: nothing is known to have changed, so the pods may come
    from the watch instead of a list.
    """
    if body["metadata"].get("deletionTimestamp"):
        return None  # garbage collection removes the children; do not re-create them
    # The owner's lock first: a run waiting for another run of the same NIMService holds no turn.
    async with runtime.slot(body["metadata"]["uid"]).lock, runtime.turn():
        return await _reconcile_held(runtime, body, logger=logger, periodic=periodic)


async def _reconcile_held(
    runtime: Runtime,
    body: Mapping[str, Any],
    *,
    logger: Logger,
    periodic: bool,
) -> Outcome:
    """`reconcile`, once the NIMService's lock and a turn are held."""
    meta = body["metadata"]
    owner = Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
    runtime.slot(owner.uid).has_read = True
    parsed = _parse_spec(owner, body)
    spec = parsed if isinstance(parsed, NIMServiceSpec) else None
    problem = parsed if isinstance(parsed, Problem) else None
    monitor_missing = False
    exposed: tuple[ConditionReport, ...] = ()
    external_endpoint = None
    rejected = False
    applied = None
    lws_served = False
    if spec is not None:
        problem = await _missing_dependency(runtime.kube, owner, spec)
    if spec is not None and problem is None:
        lws_served = await multinode.leader_worker_sets_served(runtime.capabilities)
        problem = multinode.missing_backend(spec, lws_served)
    cd_served, domain = False, compute_domain.DomainView()
    if spec is not None and problem is None:
        cd_served = await compute_domain.compute_domains_served(runtime.capabilities)
        view = await compute_domain.read_domain(runtime.kube, owner, spec, cd_served)
        problem, domain = (view, domain) if isinstance(view, Problem) else (None, view)
    dra_api = False
    if spec is not None and problem is None:
        dra_api = await dra_served(runtime.capabilities)
        problem = dra_unavailable(spec, dra_api)
    if spec is not None and problem is None and spec.storage.nim_cache is not None:
        # Rendered with the cache's claim and model; a cache still downloading is a wait.
        mounted = await _mount_cache(runtime.kube, owner, spec)
        spec, problem = (mounted, None) if isinstance(mounted, NIMServiceSpec) else (spec, mounted)
    if spec is not None and problem is None:
        monitors = await runtime.capabilities.has(*SERVICE_MONITORS)
        monitor_missing = spec.metrics_enabled() and not monitors
        gateway = await exposure.gateway_support(runtime.capabilities)
        try:
            reported = runtime.slot(owner.uid).last_status or body.get("status") or {}
            applied = await _sync_children(
                runtime,
                owner,
                spec,
                service_monitors=monitors,
                gateway=gateway,
                previous_service=exposure.previous_service_name(reported),
                claim_templates=dra_api,
                leader_worker_sets=lws_served,
                compute_domains=cd_served,
                compute_domain_channel=domain.channel,
            )
            picker = await exposure.read_endpoint_picker(runtime.kube, owner, spec, gateway)
            report = exposure.exposure_report(owner, spec, gateway, picker)
            exposed = () if report is None else (report,)
            external_endpoint = exposure.external_endpoint(owner, spec, gateway)
        except TransientApiError:
            raise
        except ApiError as e:
            # The spec passed the CRD schema and pydantic, but a child built from it did not
            # pass the API server (e.g. a malformed affinity), or we may not write it (RBAC).
            problem = Problem("ChildRejected", _clip(f"{e.reason}: {e}"))
            rejected = e.invalid_content
    # Without LeaderWorkerSets nothing was applied: a Deployment from before the switch to
    # multiNode may still be serving, and the status says so.
    multi_node = spec is not None and spec.multi_node is not None and lws_served
    deployment, pods = await _observe(
        runtime, owner, applied, periodic=periodic, multi_node=multi_node
    )
    dra_statuses = await observe_dra_statuses(
        runtime.kube,
        owner,
        spec,
        pods,
        dra_served=dra_api,
        previous=runtime.slot(owner.uid).last_status or body.get("status") or {},
    )
    obs = Observation(
        owner=owner,
        generation=int(meta.get("generation") or 0),
        spec=spec,
        config_problem=problem,
        deployment=deployment,
        pods=pods,
        service_monitor_missing=monitor_missing,
        external_endpoint=external_endpoint,
        extra_conditions=(
            *_autoscaler_conditions(runtime.slot(owner.uid), spec, body.get("status") or {}),
            *exposed,
            *await routed_condition(runtime.gateways, owner, spec, deployment),
        ),
        dra_resource_statuses=dra_statuses,
        compute_domain_status=domain.status,
    )
    status = await _write_status(runtime, body, owner, obs, logger=logger, periodic=periodic)
    return Outcome(status=status, failure=problem, permanent=spec is None or rejected)


def reconcile_later(
    runtime: Runtime,
    namespace: str,
    name: str,
    uid: str,
    *,
    logger: Logger,
) -> asyncio.Task[Outcome | None] | None:
    """Start a reconcile of a NIMService shortly, in the background; None if one is waiting.

    For a child event, and for kopf's resume of each NIMService when a new process takes over.

    A burst of child events folds into one run: while a run waits (the delay, then the
    NIMService's lock and a turn) it has read nothing yet, so it will see whatever a later
    event was about, and that event starts nothing. The NIMService is read only once the lock
    and a turn are held: a body read earlier would be stale by then (and, by the thousand in
    a burst, would sit in memory meanwhile), and could resurrect the children of a deleted
    service. The caller does not wait: kopf's worker for the child that changed moves on.
    """
    key = f"{namespace}/{name}"
    if not runtime.enqueue(key):
        return None
    return runtime.spawn(_reconcile_queued(runtime, key, uid, logger=logger))


async def reconcile_soon(
    runtime: Runtime,
    namespace: str,
    name: str,
    uid: str,
    *,
    logger: Logger,
) -> Outcome | None:
    """`reconcile_later`, awaited: the outcome of the run, or None if it was folded or moot."""
    task = reconcile_later(runtime, namespace, name, uid, logger=logger)
    return None if task is None else await task


async def _reconcile_queued(
    runtime: Runtime,
    key: str,
    uid: str,
    *,
    logger: Logger,
) -> Outcome | None:
    namespace, name = key.split("/", 1)
    waiting = True
    try:
        await asyncio.sleep(runtime.settings.child_event_delay)
        async with runtime.slot(uid).lock, runtime.turn():
            # Reading from here on: a later event needs a run of its own.
            runtime.dequeue(key)
            waiting = False
            body = await runtime.kube.get(NIMSERVICES, namespace, name)
            if body is None or body["metadata"]["uid"] != uid:
                runtime.forget(uid)  # gone (or replaced by a namesake with a run of its own)
                return None
            if body["metadata"].get("deletionTimestamp"):
                return None
            if runtime.object_logger is not None:
                logger = runtime.object_logger(body)
            return await _reconcile_held(runtime, body, logger=logger, periodic=False)
    except TransientApiError as e:
        logger.warning("Queued reconcile postponed: %s", e)
        return None
    except Exception:  # nobody awaits a background run to see it fail: say it here
        logger.exception("Queued reconcile failed")
        return None
    finally:
        if waiting:  # cancelled before its turn: let the next event queue a run
            runtime.dequeue(key)
