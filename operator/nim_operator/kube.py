"""The one Kubernetes API helper: every request the operator makes goes through `KubeClient`.

It speaks plain HTTP (aiohttp, the client kopf itself uses) with the credentials kopf's own login
functions find (in-cluster service account or kubeconfig), and handles the API's failure modes in
one place:

* 404 is an answer, not an error: `get` returns None, `delete` returns False.
* 409 on delete with a uid precondition means "not the object we meant": `delete` returns False.
* 429, 5xx, 409 on a patch, connection errors and timeouts are retried a bounded number of
  times with exponential backoff (honouring Retry-After), then raised as `TransientApiError`.
* 409 on a replace (PUT) is not retried: the body carried the resourceVersion it was read at,
  so a 409 says someone else wrote the object since, and only the caller can decide what now
  (optimistic concurrency, as leader election needs it).
* ... except the 500 the API server answers when an applied object does not fit its kind's type
  ("failed to create typed patch object", kubernetes/kubernetes#139253): that is invalid
  content, retrying cannot fix it, so it is an `ApiError` with `invalid_content`.
* 401 triggers one fresh login (tokens rotate), then the request is retried.

Nothing here logs request or response bodies: a Secret read must never reach a log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

__all__ = [
    "ApiError",
    "CapabilityCache",
    "KubeClient",
    "ResourceKind",
    "TransientApiError",
    "login",
]

logger = logging.getLogger(__name__)

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
# Ask for metadata only: existence checks of Secrets must not even transfer the secret data.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
RETRIABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# How the API server words a server-side apply it could not type (it answers 500, not 422).
TYPED_PATCH_FAILURE = "failed to create typed patch object"


class ApiError(Exception):
    """A Kubernetes API failure that retrying will not fix (or that retrying did not fix)."""

    def __init__(self, status: int, reason: str, message: str, *, method: str, path: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{method} {path} failed: {status} {reason}: {message}")

    @property
    def invalid_content(self) -> bool:
        """The API server refused what was sent: only a different object can succeed."""
        if self.status in (400, 422):
            return True
        return self.status == 500 and TYPED_PATCH_FAILURE in self.message


class TransientApiError(ApiError):
    """The API kept failing in a way that may pass (5xx, 429, timeouts); try again later."""


@dataclass(frozen=True)
class ResourceKind:
    """Enough of a resource to build its URLs: `apps/v1` + `deployments`."""

    api_version: str
    plural: str
    namespaced: bool = True

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str = ""
    ) -> str:
        base = f"/apis/{self.api_version}" if "/" in self.api_version else "/api/v1"
        parts = [base]
        if self.namespaced and namespace is not None:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name is not None:
            parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


LoginFn = Callable[[], Awaitable[kopf.ConnectionInfo]]


async def login() -> kopf.ConnectionInfo:
    """The credentials kopf itself would use: in-cluster first, then the kubeconfig.

    kopf's `login_via_client` reads them with the official client (exec plugins, token files);
    its two minimal readers are the fallback when that finds nothing.
    """
    settings = kopf.OperatorSettings()
    try:
        info = await asyncio.to_thread(kopf.login_via_client, logger=logger, settings=settings)
    except kopf.LoginError:
        info = None
    for fallback in (kopf.login_with_service_account, kopf.login_with_kubeconfig):
        if info is not None:
            break
        info = await asyncio.to_thread(fallback, logger=logger, settings=settings)
    if info is None:
        raise kopf.LoginError("no in-cluster service account and no kubeconfig found")
    return info


class KubeClient:
    """Async Kubernetes API access with bounded retries; see the module docstring."""

    def __init__(
        self,
        info: kopf.ConnectionInfo,
        *,
        relogin: LoginFn | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        user_agent: str = "nimstack-operator",
    ) -> None:
        self._info = info
        self._relogin = relogin
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def connect(cls, **kwargs: Any) -> KubeClient:
        return cls(await login(), relogin=login, **kwargs)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- verbs ----------------------------------------------------------------------------------

    async def get(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        *,
        metadata_only: bool = False,
        subresource: str = "",
    ) -> dict[str, Any] | None:
        headers = {"Accept": METADATA_ONLY} if metadata_only else None
        try:
            path = kind.path(namespace, name, subresource)
            return await self._request("GET", path, headers=headers)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(
        self, kind: ResourceKind, namespace: str | None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        body = await self._request("GET", kind.path(namespace), params=params)
        items: list[dict[str, Any]] = body.get("items") or []
        return items

    async def create(
        self, kind: ResourceKind, namespace: str | None, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self._request("POST", kind.path(namespace), body=dict(body))

    async def apply(
        self,
        kind: ResourceKind,
        manifest: Mapping[str, Any],
        *,
        field_manager: str,
        force: bool = True,
        subresource: str = "",
    ) -> dict[str, Any]:
        """Server-side apply: the manifest is the full intent of `field_manager` for the object."""
        meta = manifest["metadata"]
        params = {"fieldManager": field_manager, "force": "true" if force else "false"}
        return await self._request(
            "PATCH",
            kind.path(meta.get("namespace"), meta["name"], subresource),
            params=params,
            body=dict(manifest),
            content_type=APPLY_PATCH,
            retry_conflicts=True,
        )

    async def merge_patch(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str = "",
        field_manager: str | None = None,
    ) -> dict[str, Any] | None:
        """JSON merge patch; None when the object is gone."""
        params = {"fieldManager": field_manager} if field_manager else None
        try:
            return await self._request(
                "PATCH",
                kind.path(namespace, name, subresource),
                params=params,
                body=dict(patch),
                content_type=MERGE_PATCH,
                # A merge patch carries no resourceVersion, so a 409 is the server's own
                # optimistic-concurrency race: sending the same patch again is safe.
                retry_conflicts=True,
            )
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def replace(
        self, kind: ResourceKind, namespace: str | None, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Update (PUT): `body` becomes the whole object.

        With `metadata.resourceVersion` in `body`, the API server refuses the write with 409
        Conflict when the object changed since that version; that `ApiError` is raised at once.
        """
        return await self._request("PUT", kind.path(namespace, name), body=dict(body))

    async def delete(
        self, kind: ResourceKind, namespace: str | None, name: str, *, uid: str | None = None
    ) -> bool:
        """Delete (background propagation); False when it is gone or is not the `uid` meant."""
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        try:
            await self._request("DELETE", kind.path(namespace, name), body=options)
        except ApiError as e:
            if e.status in (404, 409):
                return False
            raise
        return True

    async def has_resource(self, api_version: str, plural: str) -> bool:
        """Discovery: does the cluster serve this resource (e.g. is a CRD installed)?"""
        path = f"/apis/{api_version}" if "/" in api_version else "/api/v1"
        try:
            body = await self._request("GET", path)
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in body.get("resources") or [])

    # --- transport ------------------------------------------------------------------------------

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = dict(self._info.as_http_headers())
            headers["User-Agent"] = self._user_agent
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._info.as_ssl_context()),
                headers=headers,
                timeout=self._timeout,
            )
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        retry_conflicts: bool = False,
    ) -> dict[str, Any]:
        url = self._info.server.rstrip("/") + path
        data = None if body is None else json.dumps(body)
        request_headers = {"Content-Type": content_type, **(headers or {})}
        relogged = False
        attempt = 0
        while True:
            try:
                session = self._open_session()
                async with session.request(
                    method, url, params=params, data=data, headers=request_headers
                ) as response:
                    text = await response.text()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientConnectionError, TimeoutError) as e:
                failure: ApiError = TransientApiError(
                    0, type(e).__name__, str(e) or "no response", method=method, path=path
                )
                retry_after = None
            else:
                if status < 400:
                    parsed: dict[str, Any] = json.loads(text) if text else {}
                    return parsed
                reason, message = _status_details(text)
                if status == 401 and self._relogin is not None and not relogged:
                    relogged = True
                    self._info = await self._relogin()
                    await self.close()
                    continue
                retriable = status in RETRIABLE_STATUSES or (status == 409 and retry_conflicts)
                retriable = retriable and TYPED_PATCH_FAILURE not in message
                error_cls = TransientApiError if retriable else ApiError
                failure = error_cls(status, reason, message, method=method, path=path)
                if not retriable:
                    raise failure
            if attempt >= self._retries:
                raise failure
            delay = self._delay(attempt, retry_after)
            logger.debug("%s %s: %s; retrying in %.2fs", method, path, failure.reason, delay)
            await asyncio.sleep(delay)
            attempt += 1

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None and retry_after.isdigit():
            return min(float(retry_after), self._max_backoff)
        exponential = min(self._backoff * 2.0**attempt, self._max_backoff)
        return exponential * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not cryptography)


def _status_details(text: str) -> tuple[str, str]:
    """reason and message of a metav1.Status body, or what there is of a non-JSON one."""
    try:
        status = json.loads(text)
    except ValueError:
        return "Unknown", text[:200]
    if not isinstance(status, dict):
        return "Unknown", text[:200]
    return str(status.get("reason") or "Unknown"), str(status.get("message") or "")[:500]


class CapabilityCache:
    """Remembers whether the cluster serves an optional resource, re-checking every `ttl` s.

    An operator that only checked at startup would never notice the Prometheus operator being
    installed later; one that checked on every reconcile would hammer discovery.
    """

    def __init__(
        self, kube: KubeClient, *, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._kube = kube
        self._ttl = ttl
        self._clock = clock
        self._known: dict[tuple[str, str], tuple[bool, float]] = {}

    async def has(self, api_version: str, plural: str) -> bool:
        key = (api_version, plural)
        cached = self._known.get(key)
        if cached is not None and self._clock() - cached[1] < self._ttl:
            return cached[0]
        try:
            present = await self._kube.has_resource(api_version, plural)
        except TransientApiError:
            if cached is not None:
                return cached[0]  # keep the last answer rather than flap on a discovery hiccup
            raise
        self._known[key] = (present, self._clock())
        return present
