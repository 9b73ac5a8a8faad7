"""kmock's KubernetesEmulator, taught the API-server behaviour our operator depends on.

kmock 0.8 stores objects and streams watch events, but merges every write into a plain dict. A
real API server does more, and the operator (and kopf) rely on it. This subclass adds, on top of
kmock's storage, discovery and watch bus:

* ``metadata.uid``, ``resourceVersion`` (one global counter), ``generation`` (bumped only when
  something outside ``metadata``/``status`` changes), ``creationTimestamp``, ``generateName``;
* the ``status`` subresource: writes to the main resource keep the stored status, writes to
  ``/status`` change nothing else, and create drops a submitted status;
* the ``scale`` subresource for Deployments and for custom resources that declare one;
* JSON merge patch, JSON patch (with ``test``, which kopf uses for finalizers) and server-side
  apply with per-manager field ownership (``metadata.managedFields``), see ``kmock_fields``;
* update (PUT), which replaces the object, and optimistic concurrency: a PUT or merge patch
  whose ``metadata.resourceVersion`` is not the stored one gets 409 Conflict (leader election);
* no-op writes do not bump the resourceVersion and emit no watch event (as on a real server);
* LIST/WATCH with label and field selectors, WATCH resumed from a resourceVersion, and
  ``timeoutSeconds``;
* pruning of unknown fields by a registered CRD's structural schema;
* two bits of kube-controller-manager, done synchronously and in one place so tests can rely on
  them: the garbage collector (deleting an owner deletes objects whose ownerReferences name its
  uid; an object created with owners that are all gone is deleted at once) and the namespace
  controller (deleting a Namespace deletes what is in it);
* API defaulting of ``Deployment.spec.replicas`` to 1;
* metadata-only reads (``Accept: ...;as=PartialObjectMetadata``) answered without the object's
  data, as the operator's existence checks of Secrets rely on;
* the API server's answer to a server-side apply whose content does not fit a built-in kind's type
  (a 500, see ``kmock_schemas``);
* kube-apiserver's strictness (``kmock_strict``, ``strict_checks``): typed and known query
  parameters, Go-typed bodies of built-in kinds, unknown fields by ``fieldValidation``, custom
  resources validated against their CRD's schema, each refusal recorded;
* a CustomResourceDefinition created or applied through the API starts with null conditions and
  is served once Established, CRD_ESTABLISH_DELAY later (``register_crd`` serves one at once);
  updating one re-registers its schema;
* the status (and nulls) a real server gives a new Deployment, Service, Namespace, Pod, PVC,
  HPA, PodDisruptionBudget or Event;
* no Gateway API kinds until their CRDs are registered (kmock's bundle lists them as built-in);
* optional RBAC (``authorizer``, see ``kmock_rbac``) and, for fault tests, ``add_fault()``
  (answer the next N matching requests with an error, or delay them), ``drop_watches()`` to cut
  every open watch at once, and ``arrival_times`` of each request.

Faults can also be injected with kmock reactions: a reaction such as
``emulator["patch", resource] << 503`` wins over these fallbacks, and then nothing is stored, as
with a real failed request (but each request then costs a scan of all earlier ones).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import copy
import datetime
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import k8s_views, parsing

from tests.support import kmock_fields as fields
from tests.support.kmock_schemas import typed_patch_errors
from tests.support.kmock_strict import StrictChecks

ObjectKey = k8s_views.ArrayKey

APPLY_PATCH = "application/apply-patch+yaml"
# How often an idle watch checks whether its client left or the test cut it (seconds).
WATCH_WAKEUP = 0.25
JSON_PATCH = "application/json-patch+json"
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
# How long after a CustomResourceDefinition is created through the API the apiextensions
# controllers accept its names and establish it (until then its resources are not served).
CRD_ESTABLISH_DELAY = 0.5


def _parse_path_with_namespace_objects(path: str) -> parsing.ParsedPath:
    """kmock's URL parser, plus the Namespace resource itself.

    kmock 0.8 reads every ``/api/v1/namespaces/...`` as a namespace prefix, so creating, listing
    or watching Namespaces (``/api/v1/namespaces``, ``/api/v1/namespaces/<name>``) fails inside
    its parser. kopf watches Namespaces when given namespace globs, and tests create them.
    """
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"]:
        if len(parts) == 3:
            return parsing.ParsedPath("", "v1", "namespaces")
        if len(parts) == 4:
            return parsing.ParsedPath("", "v1", "namespaces", None, parts[3])
        if len(parts) == 5 and parts[4] in ("status", "finalize"):
            return parsing.ParsedPath("", "v1", "namespaces", None, parts[3], parts[4])
    return _parse_path(path)


# The parser is looked up on the module at every request, so replacing it here fixes it for
# every kmock handler in this process; kmock's own behaviour for all other paths is unchanged.
_parse_path = parsing.parse_path
parsing.parse_path = _parse_path_with_namespace_objects


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


def _api_version(resource: kmock.resource) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)


def _content_type(request: kmock.Request) -> str:
    for key, value in request.headers.items():
        if key.lower() == "content-type":
            return value.split(";")[0].strip().lower()
    return "application/json"


@attrs.frozen
class ScalePaths:
    spec_replicas: fields.Path
    status_replicas: fields.Path
    selector: fields.Path | None  # a string selector in status; None means spec.selector


DEPLOYMENT_SCALE = ScalePaths(("spec", "replicas"), ("status", "replicas"), None)


def _dotted(path: str) -> fields.Path:
    return tuple(part for part in path.split(".") if part)


RequestTest = Callable[[kmock.Request], bool]
FaultEffect = Callable[[kmock.Request], Awaitable[kmock.Response | None]]


@attrs.define
class Fault:
    matches: RequestTest
    effect: FaultEffect
    remaining: int


class Authorizer(Protocol):
    def authorize(self, request: kmock.Request, *, creates: bool) -> str | None:
        """None to allow the request, else the message of a 403 Forbidden."""


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):
    """A stateful Kubernetes API emulator with the semantics listed in the module docstring."""

    watch_history: int = 5000
    authorizer: Authorizer | None = None
    # Loop time at which each request arrived, by kmock's request id (for backoff assertions).
    arrival_times: dict[int, float] = attrs.field(factory=dict, init=False)

    _faults: list[Fault] = attrs.field(factory=list, init=False)
    _watch_cut: asyncio.Event | None = attrs.field(default=None, init=False)
    _watch_cut_abort: bool = attrs.field(default=False, init=False)
    _revision: int = attrs.field(default=0, init=False)
    _managed: dict[ObjectKey, fields.ManagedFields] = attrs.field(factory=dict, init=False)
    _changes: dict[kmock.resource, collections.deque[tuple[int, dict[str, Any]]]] = attrs.field(
        init=False, factory=dict
    )
    _scales: dict[kmock.resource, ScalePaths] = attrs.field(init=False, factory=dict)
    _schemas: dict[kmock.resource, Mapping[str, Any]] = attrs.field(init=False, factory=dict)
    # Resources served for a CustomResourceDefinition (with or without a schema).
    _custom_resources: set[kmock.resource] = attrs.field(init=False, factory=set)
    # What kube-apiserver refuses (kmock_strict): every request and stored object is checked.
    strict_checks: StrictChecks = attrs.field(factory=StrictChecks, init=False)
    _background: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)

    _builtin_reactions: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        # kmock's bundle lists the Gateway API's kinds, but they are CRDs: a real cluster serves
        # them only once someone installs those (tests install them with `register_crd`).
        for resource in [r for r in self.resources if r.group in CRD_ONLY_GROUPS]:
            del self.resources[resource]
        self._scales[DEPLOYMENTS] = DEPLOYMENT_SCALE
        self._builtin_reactions = len(self._payloads)

    # --- registration ---------------------------------------------------------------------------

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve a CustomResourceDefinition at once, Established, as if installed before the test.

        One created or applied through the API is served like this only once established, as
        on a real server (see `_accept_crd`).
        """
        body = self._new_object(CRDS, None, copy.deepcopy(dict(crd)))
        self._serve_crd(body)
        body["status"] = _established_crd_status(body)
        self._revision += 1
        body["metadata"]["resourceVersion"] = str(self._revision)
        self.objects[CRDS, None, body["metadata"]["name"]] = body

    def _serve_crd(self, crd: Mapping[str, Any]) -> None:
        """Discovery, subresources, schema pruning and validation of a CRD's served versions."""
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            resource = kmock.resource(spec["group"], version["name"], names["plural"])
            if not version.get("served", True):
                continue
            subresources = version.get("subresources") or {}
            self.resources[resource] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular", names["kind"].lower()),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                shortnames=names.get("shortNames", []),
                categories=names.get("categories", []),
                subresources=set(subresources),
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            )
            self._custom_resources.add(resource)
            if scale := subresources.get("scale"):
                self._scales[resource] = ScalePaths(
                    _dotted(scale["specReplicasPath"]),
                    _dotted(scale["statusReplicasPath"]),
                    _dotted(scale["labelSelectorPath"]) if "labelSelectorPath" in scale else None,
                )
            else:
                self._scales.pop(resource, None)
            if schema := (version.get("schema") or {}).get("openAPIV3Schema"):
                self._schemas[resource] = schema
            else:
                self._schemas.pop(resource, None)

    def _accept_crd(self, body: dict[str, Any], *, created: bool) -> None:
        """A CRD written through the API: the status a real server gives it, and serving it.

        A new CRD's status is `{acceptedNames: {kind: "", plural: ""}, conditions: null,
        storedVersions: [<storage version>]}`; the apiextensions controllers then accept its
        names and establish it (here CRD_ESTABLISH_DELAY later, in the background), and only
        then are its resources served. An update of an established CRD is served at once (a
        tightened schema applies to the next write).
        """
        storage = [v["name"] for v in body["spec"].get("versions") or [] if v.get("storage")]
        if created:
            body["status"] = {
                "acceptedNames": {"kind": "", "plural": ""},
                "conditions": None,
                "storedVersions": storage,
            }
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            meta = body["metadata"]
            loop.call_later(
                CRD_ESTABLISH_DELAY,
                self._start_establishing,
                meta["name"],
                meta["uid"],
                context=contextvars.Context(),  # not on behalf of the request that created it
            )
            return
        status = body.get("status") or {}
        if _crd_established(body):
            self._serve_crd(body)
            stored = list(status.get("storedVersions") or [])
            status["storedVersions"] = stored + [v for v in storage if v not in stored]
            body["status"] = status

    def _start_establishing(self, name: str, uid: str) -> None:
        task = asyncio.ensure_future(self._establish_crd(name, uid))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _establish_crd(self, name: str, uid: str) -> None:
        async with self._lock:
            live = self._live(CRDS, None, name)
            if live is None or live["metadata"].get("uid") != uid or _crd_established(live):
                return
            self._serve_crd(live)
            live["status"] = _established_crd_status(live)
            await self._commit((CRDS, None, name), live, "MODIFIED")

    # --- request entry point --------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> Any:
        self.arrival_times[request.id] = asyncio.get_running_loop().time()
        if self.authorizer is not None:
            denied = self.authorizer.authorize(request, creates=self._creates_by_apply(request))
            if denied is not None:
                raise _error(403, "Forbidden", denied)
        self.strict_checks.check_request(self, request)
        for fault in self._faults:
            if fault.remaining > 0 and fault.matches(request):
                fault.remaining -= 1
                outcome = await fault.effect(request)
                if outcome is not None:
                    return await outcome(request)
                break  # the effect (a delay, a kill) happened; the request goes on as usual
        # With reactions added by a test (fault injection), let kmock match them first. kmock
        # matches a reaction by scanning every request served so far, which grows slow over a
        # long session, so without any, route directly to the handlers below (kmock's own
        # fallbacks would pick the same ones).
        if len(self._payloads) > self._builtin_reactions:
            # Skip KubernetesEmulator's pre-handling (it merges every write before reactions
            # run): our handlers do the writing, so an injected fault prevents the write.
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        handler = self._route(request)
        if handler is None:
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        return await kmock.Response(payload=handler)(request)

    def _creates_by_apply(self, request: kmock.Request) -> bool:
        """A server-side apply of an object that does not exist yet (authorized as create too)."""
        resource = request.resource
        if request.method != kmock.method.PATCH or resource is None or request.name is None:
            return False
        if request.subresource or _content_type(request) != APPLY_PATCH:
            return False
        return self._live(resource, request.namespace, request.name) is None

    def add_fault(
        self, times: int, matches: RequestTest, effect: FaultEffect | kmock.Response
    ) -> None:
        """Answer the next `times` requests that `matches` with `effect` instead of serving them.

        `effect` is a response (an error status: nothing is stored, as with a real failed
        request), or a coroutine function of the request that returns a response, or None to let
        the request go on to be served after whatever it did (e.g. a delay). Unlike a kmock
        reaction, which scans every request served so far on each new one, a fault costs one
        predicate call per request, so a long-running operator test stays fast.
        """
        if isinstance(effect, kmock.Response):
            response = effect

            async def respond(request: kmock.Request) -> kmock.Response | None:
                return response

            effect = respond
        self._faults.append(Fault(matches, effect, times))

    def drop_watches(self, *, abort: bool) -> None:
        """Cut every open watch: `abort` resets the connection, else the stream just ends.

        A load balancer or an API server restart does the former; the server's own watch
        timeout the latter. Clients must notice either and watch again.
        """
        self._watch_cut_abort = abort
        if self._watch_cut is not None:
            self._watch_cut.set()
        self._watch_cut = asyncio.Event()

    def _route(self, request: kmock.Request) -> Any:
        if request.resource is None or not request.resource.plural:
            return None  # discovery and other non-resource paths: kmock's scaffold serves them
        if request.method == kmock.method.PUT and request.name is not None:
            return self._serve_update  # kmock guesses no action for a PUT: an update (replace)
        return {
            kmock.action.LIST: self._serve_list,
            kmock.action.WATCH: self._serve_watch,
            kmock.action.FETCH: self._serve_fetch,
            kmock.action.CREATE: self._serve_create,
            kmock.action.UPDATE: self._serve_update,
            kmock.action.DELETE: self._serve_delete,
        }.get(request.action)

    # --- reads ----------------------------------------------------------------------------------

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        assert request.resource is not None
        assert request.name is not None
        body = self._live(request.resource, request.namespace, request.name)
        if body is None:
            raise _not_found(request.resource, request.name)
        if request.subresource == "scale":
            paths = self._scales.get(request.resource)
            replicas = fields.get_path(body, paths.spec_replicas) if paths is not None else 0
            if paths is not None and not isinstance(replicas, int):
                # A custom resource's /scale cannot be read while its replicas field is absent
                # (a PATCH can still set it): the API server answers 500 (apiextensions'
                # ScaleREST). Deployments always have one: it is defaulted.
                dotted = "." + ".".join(paths.spec_replicas)
                message = f'the spec replicas field "{dotted}" does not exist'
                raise _error(500, "InternalError", message)
            return self._scale_view(request.resource, body)
        if _wants_metadata_only(request):
            return {
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadata",
                "metadata": body["metadata"],
            }
        return body

    async def _serve_list(self, request: kmock.Request) -> Any:
        resource = self._known(request)
        items = [
            body
            for (_, namespace, _), body in self._iter_live(resource)
            if request.namespace is None or namespace == request.namespace
            if self._selected(request, body)
        ]
        kind = (self.resources[resource].kind or "") + "List"
        return {
            "apiVersion": _api_version(resource),
            "kind": kind,
            "metadata": {"resourceVersion": str(self._revision)},
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        resource = self._known(request)
        yield b""  # send the headers now: a watch with nothing to say is still a watch
        bus = self._buses[resource]
        async with self._lock:
            mark = await bus.mark()
            initial = self._initial_events(request, resource)
        # One pending read of the bus at a time, never cancelled on a timeout (a cancelled read
        # could drop an event); the periodic wake-ups notice a client that went away.
        pending: asyncio.Task[Any] | None = None
        if self._watch_cut is None:
            self._watch_cut = asyncio.Event()
        cut = self._watch_cut  # polled at each wake-up: a cut takes effect within WATCH_WAKEUP
        try:
            for event in initial:
                yield event
            timeout = float(request.params.get("timeoutSeconds") or 0) or None
            deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
            while True:
                remaining = WATCH_WAKEUP
                if deadline is not None:
                    remaining = min(remaining, deadline - asyncio.get_running_loop().time())
                    if remaining <= 0:
                        return
                if pending is None:
                    pending = asyncio.ensure_future(bus.get(since=mark))
                done, _ = await asyncio.wait({pending}, timeout=remaining)
                if cut.is_set():
                    if self._watch_cut_abort:
                        _reset_connection(request)
                    return
                if not done:
                    if _client_gone(request):
                        return  # aiohttp does not cancel handlers on disconnect; stop streaming
                    continue
                event, pending = pending.result(), None
                obj = event["object"]
                meta = obj.get("metadata", {})
                if request.namespace is not None and meta.get("namespace") != request.namespace:
                    continue
                if request.name is not None and meta.get("name") != request.name:
                    continue
                if self._selected(request, obj):
                    yield event
        finally:
            if pending is not None:
                pending.cancel()
            await bus.unmark(mark)

    def _initial_events(self, request: kmock.Request, resource: kmock.resource) -> list[Any]:
        since = request.params.get("resourceVersion")
        if since and since != "0":
            changes = self._changes.get(resource, collections.deque())
            oldest = changes[0][0] if changes else self._revision + 1
            if int(since) < oldest - 1 and len(changes) >= self.watch_history:
                gone = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410}
                return [{"type": "ERROR", "object": {**gone, "reason": "Expired"}}]
            return [
                event
                for revision, event in changes
                if revision > int(since)
                if self._in_scope(request, event["object"])
            ]
        return [
            {"type": "ADDED", "object": body}
            for _, body in self._iter_live(resource)
            if self._in_scope(request, body)
        ]

    def _in_scope(self, request: kmock.Request, body: Mapping[str, Any]) -> bool:
        meta = body.get("metadata", {})
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        if request.name is not None and meta.get("name") != request.name:
            return False
        return self._selected(request, body)

    @staticmethod
    def _selected(request: kmock.Request, body: Mapping[str, Any]) -> bool:
        labels = body.get("metadata", {}).get("labels") or {}
        return fields.matches_label_selector(
            labels, request.params.get("labelSelector")
        ) and fields.matches_field_selector(body, request.params.get("fieldSelector"))

    # --- writes ---------------------------------------------------------------------------------

    async def _serve_create(self, request: kmock.Request) -> Any:
        resource = self._known(request)
        if not isinstance(request.data, Mapping):
            raise _error(400, "BadRequest", "the body of a create must be an object")
        async with self._lock:
            body = self._new_object(resource, request.namespace, dict(request.data))
            key: ObjectKey = (resource, request.namespace, body["metadata"]["name"])
            if self._live(*key) is not None:
                raise _error(409, "AlreadyExists", f'{resource.plural} "{key[2]}" already exists')
            managed: fields.ManagedFields = {}
            fields.record_update(
                managed,
                (_manager(request), "Update", ""),
                fields.tracked_paths(body, include_status=False),
                body,
            )
            self._managed[key] = managed
            await self._commit(key, body, "ADDED")
            await self._collect_if_orphaned(key)
        return kmock.Response(status=201, payload=body)

    async def _collect_if_orphaned(self, key: ObjectKey) -> None:
        """The garbage collector deletes a new dependent whose owners no longer exist."""
        body = self._live(*key)
        owners = (body or {}).get("metadata", {}).get("ownerReferences") or []
        if not owners:
            return
        uids = {b.get("metadata", {}).get("uid") for _, b in self._iter_live()}
        if not any(owner.get("uid") in uids for owner in owners):
            await self._delete(key)

    async def _serve_update(self, request: kmock.Request) -> Any:
        resource = self._known(request)
        assert request.name is not None
        key: ObjectKey = (resource, request.namespace, request.name)
        content_type = _content_type(request)
        if content_type == APPLY_PATCH and request.subresource is None:
            _check_typed_patch(request, key)
        async with self._lock:
            live = self._live(*key)
            if live is None:
                if content_type == APPLY_PATCH and request.subresource is None:
                    return await self._create_by_apply(request, key)
                raise _not_found(resource, request.name)
            if request.subresource == "scale":
                return await self._patch_scale(request, key, live)
            if request.subresource not in (None, "status"):
                raise _error(405, "MethodNotAllowed", f"{request.subresource} is not writable")
            new = self._patched(request, key, live, content_type)
            new = self._keep_server_fields(resource, live, new, request.subresource)
            return await self._store_update(key, live, new)

    async def _create_by_apply(self, request: kmock.Request, key: ObjectKey) -> Any:
        config = _applied_config(request)
        managed: fields.ManagedFields = {}
        merged = fields.server_side_apply(
            {}, config, managed, manager=_manager(request), force=_forced(request)
        )
        body = self._new_object(key[0], key[1], merged)
        self._managed[key] = managed
        await self._commit(key, body, "ADDED")
        await self._collect_if_orphaned(key)
        return kmock.Response(status=201, payload=body)

    def _patched(
        self, request: kmock.Request, key: ObjectKey, live: dict[str, Any], content_type: str
    ) -> dict[str, Any]:
        managed = self._managed.setdefault(key, {})
        subresource = request.subresource or ""
        if request.method == kmock.method.PUT:
            if not isinstance(request.data, Mapping):
                raise _error(400, "BadRequest", "the body of an update must be an object")
            _check_resource_version(request, key, live)
            new = copy.deepcopy(dict(request.data))  # the whole object: nothing is merged
        elif content_type == APPLY_PATCH:
            try:
                return fields.server_side_apply(
                    live,
                    _applied_config(request),
                    managed,
                    manager=_manager(request),
                    force=_forced(request),
                    subresource=subresource,
                )
            except fields.FieldConflictError as e:
                raise _error(409, "Conflict", str(e)) from e
        elif content_type == JSON_PATCH:
            try:
                new = jsonpatch.apply_patch(live, request.data or [])
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise _error(422, "Invalid", f"the JSON patch cannot be applied: {e}") from e
        else:  # merge patch; a strategic merge patch is treated as one (lists replace)
            _check_resource_version(request, key, live)
            new = fields.merge_patch(live, request.data or {})
        on_status = subresource == "status"
        fields.record_update(
            managed,
            (_manager(request), "Update", subresource),
            fields.changed_paths(live, new, status=on_status),
            new,
        )
        return dict(new)

    def _keep_server_fields(
        self,
        resource: kmock.resource,
        live: Mapping[str, Any],
        new: dict[str, Any],
        subresource: str | None,
    ) -> dict[str, Any]:
        """What clients cannot change: identity metadata, and status vs. the rest."""
        if subresource == "status":
            result = copy.deepcopy(dict(live))
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            return result
        if self._has_status_subresource(resource):
            if "status" in live:
                new["status"] = copy.deepcopy(live["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for field in ("name", "namespace", "uid", "creationTimestamp", "generation"):
            if field in live.get("metadata", {}):
                meta[field] = live["metadata"][field]
        if live.get("metadata", {}).get("deletionTimestamp"):
            meta["deletionTimestamp"] = live["metadata"]["deletionTimestamp"]
        new.setdefault("apiVersion", live.get("apiVersion"))
        new.setdefault("kind", live.get("kind"))
        return new

    async def _patch_scale(
        self, request: kmock.Request, key: ObjectKey, live: dict[str, Any]
    ) -> Any:
        paths = self._scales.get(key[0])
        if paths is None:
            raise _error(404, "NotFound", f"{key[0].plural} have no scale subresource")
        current = self._scale_view(key[0], live)
        # A Scale written with its resourceVersion applies only to that version of the object
        # (kubectl scale --resource-version, and a scaler that writes what it read).
        _check_resource_version(request, key, live)
        patched = fields.merge_patch(current, request.data or {})
        replicas = patched.get("spec", {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise _error(422, "Invalid", "spec.replicas must be a non-negative integer")
        new = copy.deepcopy(live)
        node = new
        for part in paths.spec_replicas[:-1]:
            node = node.setdefault(part, {})
        node[paths.spec_replicas[-1]] = replicas
        fields.record_update(
            self._managed.setdefault(key, {}),
            (_manager(request), "Update", "scale"),
            fields.changed_paths(live, new, status=False),
            new,
        )
        stored = await self._store_update(key, live, new)
        return self._scale_view(key[0], stored)

    async def _store_update(
        self, key: ObjectKey, live: dict[str, Any], new: dict[str, Any]
    ) -> dict[str, Any]:
        resource = key[0]
        new = self._pruned(resource, new)
        self._default(resource, new)
        new["metadata"]["managedFields"] = self._render_managed(key, new)
        if _without_revision(new) == _without_revision(live):
            return live  # a no-op: no new resourceVersion, no watch event
        if _spec_like(new) != _spec_like(live):
            new["metadata"]["generation"] = int(live["metadata"].get("generation", 1)) + 1
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._commit(key, new, "MODIFIED")
            await self._finalize_deletion(key)
            return new
        await self._commit(key, new, "MODIFIED")
        return new

    async def _serve_delete(self, request: kmock.Request) -> Any:
        resource = self._known(request)
        assert request.name is not None
        key: ObjectKey = (resource, request.namespace, request.name)
        async with self._lock:
            live = self._live(*key)
            if live is None:
                raise _not_found(resource, request.name)
            options = request.data if isinstance(request.data, Mapping) else {}
            preconditions = options.get("preconditions") or {}
            for field in ("uid", "resourceVersion"):
                expected = preconditions.get(field)
                if expected is not None and live["metadata"].get(field) != expected:
                    raise _error(409, "Conflict", f"Precondition failed: {field} mismatch")
            await self._delete(key)
            return self._live(*key) or live

    async def _delete(self, key: ObjectKey) -> None:
        """Delete now, or mark for deletion while finalizers remain (the API-server part)."""
        live = self._live(*key)
        if live is None:
            return
        meta = live["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                marked = copy.deepcopy(live)
                marked["metadata"]["deletionTimestamp"] = _now()
                await self._commit(key, marked, "MODIFIED")
            return
        await self._finalize_deletion(key)

    async def _finalize_deletion(self, key: ObjectKey) -> None:
        live = self._live(*key)
        if live is None:
            return
        gone = copy.deepcopy(live)
        self._revision += 1
        gone["metadata"]["resourceVersion"] = str(self._revision)
        self.objects[key].delete()
        self._managed.pop(key, None)
        await self._publish(key[0], "DELETED", gone)
        # kube-controller-manager's garbage collector (background propagation, but at once):
        uid = gone["metadata"].get("uid")
        for dependent_key, body in list(self._iter_live()):
            owners = body.get("metadata", {}).get("ownerReferences") or []
            if any(owner.get("uid") == uid for owner in owners):
                await self._delete(dependent_key)
        # ... and its namespace controller:
        if key[0] == kmock.resource("", "v1", "namespaces"):
            for inner_key, _ in list(self._iter_live()):
                if inner_key[1] == key[2]:
                    await self._delete(inner_key)

    # --- storage --------------------------------------------------------------------------------

    def _new_object(
        self, resource: kmock.resource, namespace: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        body = copy.deepcopy(body)
        info = self.resources[resource]
        body.setdefault("apiVersion", _api_version(resource))
        body.setdefault("kind", info.kind)
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                group = f".{resource.group}" if resource.group else ""
                raise _error(
                    422,
                    "Invalid",
                    f'{info.kind}{group} "" is invalid: metadata.name: Required value: '
                    "name or generateName is required",
                )
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if info.namespaced is not False:
            namespace = namespace or meta.get("namespace")
            if not namespace:
                raise _error(422, "Invalid", "metadata.namespace is required")
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        for field in ("resourceVersion", "deletionTimestamp", "managedFields"):
            meta.pop(field, None)
        if self._has_status_subresource(resource):
            body.pop("status", None)
        body = self._pruned(resource, body)
        self._default(resource, body, created=True)
        return body

    def _default(
        self, resource: kmock.resource, body: dict[str, Any], *, created: bool = False
    ) -> None:
        """What the API server does to every object it is about to store, then its checks.

        The defaulting the operator and tests can observe (new objects get the status, and the
        nulls, a real server gives them), then kmock_strict's validation (it raises what the
        API server would answer instead of storing).
        """
        if resource == DEPLOYMENTS:
            body.setdefault("spec", {}).setdefault("replicas", 1)
        if resource == NAMESPACES:
            # The API server keeps this label on every Namespace (since Kubernetes 1.21).
            labels = body.setdefault("metadata", {}).get("labels") or {}
            labels["kubernetes.io/metadata.name"] = body["metadata"].get("name")
            body["metadata"]["labels"] = labels
        if created:
            _initial_state(resource, body)
        self.strict_checks.check_stored(self, resource, body, created=created)
        if resource == CRDS:
            self._accept_crd(body, created=created)

    def _pruned(self, resource: kmock.resource, body: dict[str, Any]) -> dict[str, Any]:
        schema = self._schemas.get(resource)
        if schema is None:
            return body
        kept = {key: body[key] for key in ("apiVersion", "kind", "metadata") if key in body}
        rest = _prune({k: v for k, v in body.items() if k not in kept}, schema)
        return {**kept, **rest}

    def _render_managed(self, key: ObjectKey, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        return fields.render_managed_fields(
            self._managed.get(key, {}), api_version=str(body.get("apiVersion")), time=_now()
        )

    async def _commit(self, key: ObjectKey, body: dict[str, Any], event: str) -> None:
        self._revision += 1
        body["metadata"]["resourceVersion"] = str(self._revision)
        if event == "ADDED":
            body["metadata"]["managedFields"] = self._render_managed(key, body)
        if key in self.objects:
            self.objects[key].history.append(copy.deepcopy(body))
        else:
            self.objects[key] = copy.deepcopy(body)
        await self._publish(key[0], event, copy.deepcopy(body))

    async def _publish(self, resource: kmock.resource, event: str, body: dict[str, Any]) -> None:
        changes = self._changes.setdefault(resource, collections.deque(maxlen=self.watch_history))
        message = {"type": event, "object": body}
        changes.append((self._revision, message))
        await self._buses[resource].put(message)

    def _live(self, resource: Any, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def _iter_live(
        self, resource: kmock.resource | None = None
    ) -> list[tuple[ObjectKey, dict[str, Any]]]:
        """Every live object (of `resource` only, if given: cheaper than filtering the bodies)."""
        return [
            (key, obj.raw)
            for key, obj in self.objects.items()
            if (resource is None or key[0] == resource) and not obj.deleted
        ]

    def _known(self, request: kmock.Request) -> kmock.resource:
        resource = request.resource
        if resource is None or resource not in self.resources:
            raise _error(404, "NotFound", f"the server could not find the resource {resource}")
        return resource

    def _has_status_subresource(self, resource: kmock.resource) -> bool:
        return resource in self.resources and "status" in self.resources[resource].subresources

    def _scale_view(self, resource: kmock.resource, body: Mapping[str, Any]) -> dict[str, Any]:
        paths = self._scales.get(resource)
        if paths is None:
            raise _error(404, "NotFound", f"{resource.plural} have no scale subresource")
        replicas = fields.get_path(body, paths.spec_replicas)
        current = fields.get_path(body, paths.status_replicas)
        if paths.selector is None:
            match_labels = body.get("spec", {}).get("selector", {}).get("matchLabels", {})
            selector: Any = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
        else:
            selector = fields.get_path(body, paths.selector)
        meta = body["metadata"]
        status: dict[str, Any] = {"replicas": current if isinstance(current, int) else 0}
        if isinstance(selector, str) and selector:
            status["selector"] = selector
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                key: meta[key]
                for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if key in meta
            },
            "spec": {"replicas": replicas if isinstance(replicas, int) else 0},
            "status": status,
        }


DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
# API groups kmock's bundled resource list has although no cluster serves them without CRDs.
CRD_ONLY_GROUPS = frozenset({"gateway.networking.k8s.io"})
NAMESPACES = kmock.resource("", "v1", "namespaces")
PODS = kmock.resource("", "v1", "pods")
# The status a real API server gives a new object of these kinds (status is null elsewhere; a
# custom resource with a status subresource gets none).
_INITIAL_STATUS: dict[kmock.resource, dict[str, Any]] = {
    DEPLOYMENTS: {},
    kmock.resource("", "v1", "services"): {"loadBalancer": {}},
    NAMESPACES: {"phase": "Active"},
    kmock.resource("", "v1", "persistentvolumeclaims"): {"phase": "Pending"},
    kmock.resource("autoscaling", "v2", "horizontalpodautoscalers"): {
        "currentMetrics": None,
        "desiredReplicas": 0,
    },
    kmock.resource("policy", "v1", "poddisruptionbudgets"): {
        "currentHealthy": 0,
        "desiredHealthy": 0,
        "disruptionsAllowed": 0,
        "expectedPods": 0,
    },
}


def _initial_state(resource: kmock.resource, body: dict[str, Any]) -> None:
    """Fields a real server fills in (or returns as null) on a new object of a built-in kind."""
    if resource in _INITIAL_STATUS:
        body["status"] = copy.deepcopy(_INITIAL_STATUS[resource])
    if resource == PODS:
        body["status"] = {"phase": "Pending", "qosClass": _qos_class(body.get("spec") or {})}
    elif resource == NAMESPACES:
        body.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    elif resource == kmock.resource("", "v1", "secrets"):
        body.setdefault("type", "Opaque")
    elif resource == kmock.resource("", "v1", "events"):
        # MicroTime and Time are structs in Go: `omitempty` leaves them as null, not absent.
        for field in ("eventTime", "firstTimestamp", "lastTimestamp"):
            body.setdefault(field, None)
        for field in ("reportingComponent", "reportingInstance"):
            body.setdefault(field, "")
        body.setdefault("source", {})
        body.setdefault("involvedObject", {})


def _qos_class(spec: Mapping[str, Any]) -> str:
    """A pod's QoS class from its containers' CPU and memory requests and limits."""
    containers = [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
    requests: dict[str, set[str]] = {}
    limits: dict[str, set[str]] = {}
    guaranteed = bool(containers)
    for container in containers:
        resources = container.get("resources") or {}
        container_limits = {
            k: str(v) for k, v in (resources.get("limits") or {}).items() if k in _QOS_RESOURCES
        }
        container_requests = {
            k: str(v) for k, v in (resources.get("requests") or {}).items() if k in _QOS_RESOURCES
        }
        container_requests = {**container_limits, **container_requests}  # requests default
        for name, value in container_requests.items():
            requests.setdefault(name, set()).add(value)
        for name, value in container_limits.items():
            limits.setdefault(name, set()).add(value)
        if set(container_limits) != set(_QOS_RESOURCES) or any(
            container_requests[k] != container_limits[k] for k in _QOS_RESOURCES
        ):
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


_QOS_RESOURCES = ("cpu", "memory")


def _crd_established(crd: Mapping[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def _established_crd_status(crd: Mapping[str, Any]) -> dict[str, Any]:
    """A CRD's status once its names are accepted and it is established."""
    names = crd["spec"]["names"]
    accepted = {
        "kind": names["kind"],
        "listKind": names.get("listKind") or names["kind"] + "List",
        "plural": names["plural"],
        "singular": names.get("singular") or names["kind"].lower(),
    }
    for optional in ("shortNames", "categories"):
        if names.get(optional):
            accepted[optional] = list(names[optional])
    now = _now()
    stored = list((crd.get("status") or {}).get("storedVersions") or [])
    storage = [v["name"] for v in crd["spec"].get("versions") or [] if v.get("storage")]
    return {
        "acceptedNames": accepted,
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": now,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": now,
            },
        ],
        "storedVersions": stored + [v for v in storage if v not in stored],
    }


def _check_typed_patch(request: kmock.Request, key: ObjectKey) -> None:
    """The API server's (500) answer to an applied configuration that does not fit its type."""
    config = _applied_config(request)
    problems = typed_patch_errors(config)
    if problems:
        where = f"{key[1]}/{key[2]}" if key[1] else str(key[2])
        gvk = f"{config['apiVersion']}, Kind={config['kind']}"
        raise _error(
            500,
            "InternalError",
            f"failed to create typed patch object ({where}; {gvk}): {problems[0]}",
        )


def _check_resource_version(
    request: kmock.Request, key: ObjectKey, live: Mapping[str, Any]
) -> None:
    """A write carrying metadata.resourceVersion applies only to that version (409 otherwise).

    This is the API server's optimistic concurrency: an update (or merge patch) made from a read
    fails when someone else wrote the object since, and leader election depends on it.
    """
    body = request.data if isinstance(request.data, Mapping) else {}
    expected = (body.get("metadata") or {}).get("resourceVersion")
    if expected is None or str(expected) == live.get("metadata", {}).get("resourceVersion"):
        return
    resource = key[0]
    what = f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)
    raise _error(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {what} "{key[2]}": the object has been modified; '
        "please apply your changes to the latest version and try again",
    )


def _wants_metadata_only(request: kmock.Request) -> bool:
    accept = next((v for k, v in request.headers.items() if k.lower() == "accept"), "")
    return "as=PartialObjectMetadata" in accept


def _reset_connection(request: kmock.Request) -> None:
    raw = request._raw_request
    transport = raw.transport if raw is not None else None
    if transport is not None:
        transport.abort()


def _client_gone(request: kmock.Request) -> bool:
    raw = request._raw_request
    transport = raw.transport if raw is not None else None
    return transport is None or transport.is_closing()


def _not_found(resource: kmock.resource, name: str) -> kmock.KubernetesError:
    return _error(404, "NotFound", f'{resource.plural} "{name}" not found')


def _manager(request: kmock.Request) -> str:
    if manager := request.params.get("fieldManager"):
        return manager
    agent = next((v for k, v in request.headers.items() if k.lower() == "user-agent"), "")
    return agent.split("/")[0] or "unknown"


def _forced(request: kmock.Request) -> bool:
    return request.params.get("force", "false").lower() == "true"


def _applied_config(request: kmock.Request) -> dict[str, Any]:
    # kmock has parsed a JSON body already (clients send JSON, which is YAML too): a copy of
    # that is many times cheaper than PyYAML's pure-Python parse, which dominated the
    # emulator's time under the operator benchmark's load.
    if isinstance(request.data, dict):
        config: Any = copy.deepcopy(request.data)
    else:
        config = yaml.safe_load(request.text) if request.text else None
    if not isinstance(config, dict):
        raise _error(400, "BadRequest", "an applied configuration must be an object")
    if not config.get("apiVersion") or not config.get("kind"):
        raise _error(400, "BadRequest", "an applied configuration needs apiVersion and kind")
    return config


def _without_revision(body: Mapping[str, Any]) -> str:
    meta = {
        k: v
        for k, v in body.get("metadata", {}).items()
        if k not in ("resourceVersion", "managedFields")
    }
    managers = sorted(
        (e["manager"], e["operation"], json.dumps(e["fieldsV1"], sort_keys=True))
        for e in body.get("metadata", {}).get("managedFields", [])
    )
    return json.dumps({**body, "metadata": meta, "_managers": managers}, sort_keys=True)


def _spec_like(body: Mapping[str, Any]) -> str:
    """Everything a generation counts: all but metadata and status."""
    return json.dumps(
        {k: v for k, v in body.items() if k not in ("metadata", "status")}, sort_keys=True
    )


def _prune(value: Any, schema: Mapping[str, Any]) -> Any:
    """Drop fields a structural schema does not declare (as the API server does)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, Mapping):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        if properties is None and additional is None:
            return dict(value) if schema.get("type") != "object" else {}
        result = {}
        for key, item in value.items():
            if properties is not None and key in properties:
                result[key] = _prune(item, properties[key])
            elif isinstance(additional, Mapping):
                result[key] = _prune(item, additional)
            elif additional is True:
                result[key] = item
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_prune(item, schema["items"]) for item in value]
    return value
