"""Forwarding one request to a replica and its answer back, byte for byte, as it arrives.

The answer is never buffered: each chunk the replica sends (an SSE event, usually) is written
to the client as soon as it is read. While the request is open a task listens for the client's
disconnect; on it everything is cancelled and the upstream connection closed, which is how the
replica learns to abort the generation (nim-serve aborts on disconnect).
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import anyio
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from nim_gateway.backends import BackendTable, Endpoint, Lookup, WakeTarget
from nim_gateway.errors import error_response, sse_error_event
from nim_gateway.routing import (
    HashRing,
    affinity_text,
    pick_least_load,
    pick_prefix_affinity,
    pick_round_robin,
)
from nim_gateway.settings import GatewaySettings
from nim_gateway.wake import Waker

__all__ = [
    "BACKEND_HEADER",
    "DROPPED_RESPONSE_HEADERS",
    "Answered",
    "Proxy",
    "ProxyResponse",
    "Router",
]

log = logging.getLogger(__name__)

BACKEND_HEADER = "x-nimstack-backend"
# Answers that mean "this replica cannot take it now, another may": retried once elsewhere.
RETRIABLE = frozenset({429, 503})
FORWARDED_REQUEST_HEADERS = (
    "content-type",
    "accept",
    "accept-encoding",
    "x-request-id",
    "traceparent",
    "tracestate",
)
# Hop-by-hop headers, and those the gateway's own server writes (a second copy would be wrong).
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "date",
        "server",
    }
)
# Told of the replica's answer (status and headers) before it is relayed.
Answered = Callable[[Endpoint, int, Mapping[str, str]], None]


class Router:
    """Picks a replica for a request among a Lookup's candidates, by the model's strategy."""

    def __init__(self, settings: GatewaySettings, rng: random.Random | None = None) -> None:
        self._settings = settings
        self._rng = rng or random.Random()  # noqa: S311  # spreading load, not secrecy
        # Rings by membership: rebuilt only when the set of replicas changes.
        self._rings: OrderedDict[frozenset[str], HashRing] = OrderedDict()
        # One counter for every model: with several models each still visits its replicas in
        # turn over time, if not strictly alternately.
        self._turns = itertools.count()

    def choose(
        self, lookup: Lookup, body: Mapping[str, Any], exclude: Sequence[Endpoint] = ()
    ) -> Endpoint | None:
        by_url: dict[str, Endpoint] = {}
        for endpoint in lookup.candidates:
            if endpoint not in exclude:
                by_url.setdefault(endpoint.url, endpoint)
        if not by_url:
            return None
        routing = lookup.routing or self._settings.default_routing
        if routing == "prefix-affinity":
            loads = {url: e.load() for url, e in by_url.items()}
            key = affinity_text(
                body,
                self._settings.prefix_chars,
                after_system_prompt=self._settings.prefix_chars_from == "after-system-prompt",
            )
            url = pick_prefix_affinity(
                self._ring(by_url), key, loads, self._settings.prefix_load_factor
            )
        elif routing == "round-robin":
            url = pick_round_robin(by_url, next(self._turns))
        else:
            samples = {url: (e.load(), e.kv_usage) for url, e in by_url.items()}
            url = pick_least_load(samples, self._rng)
        return by_url[url]

    def _ring(self, by_url: Mapping[str, Endpoint]) -> HashRing:
        members = frozenset(by_url)
        ring = self._rings.get(members)
        if ring is None:
            ring = HashRing(sorted(members), self._settings.ring_virtual_nodes)
            self._rings[members] = ring
            if len(self._rings) > 256:
                self._rings.popitem(last=False)
        self._rings.move_to_end(members)
        return ring


class Proxy:
    def __init__(
        self,
        settings: GatewaySettings,
        table: BackendTable,
        router: Router,
        session: aiohttp.ClientSession,
    ) -> None:
        self.settings = settings
        self.table = table
        self.router = router
        self.session = session
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=None
        )

    def upstream_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        forwarded = {name: headers[name] for name in FORWARDED_REQUEST_HEADERS if name in headers}
        if self.settings.backend_api_key:
            forwarded["authorization"] = f"Bearer {self.settings.backend_api_key}"
        elif "authorization" in headers:
            forwarded["authorization"] = headers["authorization"]
        return forwarded

    async def forward(
        self,
        path: str,
        raw_body: bytes,
        body: Mapping[str, Any],
        headers: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        prefer: str | None = None,
        answered: Answered | None = None,
    ) -> None:
        """`prefer`: a replica's URL tried first, whatever routing would pick, and whose 429 or
        503 is passed on rather than retried elsewhere (the replica holding a stored response:
        the others cannot continue it). If it is gone or refuses, routing picks as usual."""
        model = str(body["model"])
        tried: list[Endpoint] = []
        for attempt in range(2):
            lookup = self.table.lookup(model)
            pinned = self._preferred(prefer, model, tried)
            endpoint = pinned or self.router.choose(lookup, body, tried)
            if endpoint is None:
                break
            tried.append(endpoint)
            endpoint.inflight += 1
            try:
                try:
                    upstream = await self.session.post(
                        endpoint.url + path,
                        data=raw_body,
                        headers=headers,
                        timeout=self._timeout,
                        skip_auto_headers=("Accept-Encoding", "Content-Type"),
                    )
                except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
                    # The request never reached the replica: safe to send elsewhere.
                    log.warning("replica %s refused %s: %s", endpoint.url, path, error)
                    endpoint.healthy = False
                    continue
                try:
                    if upstream.status in RETRIABLE:
                        # Out of rotation for as long as it asks (capped), here and for others.
                        self._back_off(endpoint, upstream.headers.get("Retry-After"))
                        if (
                            attempt == 0
                            and pinned is None
                            and self.router.choose(self.table.lookup(model), body, tried)
                            is not None
                        ):
                            log.info(
                                "replica %s answered %d; retrying", endpoint.url, upstream.status
                            )
                            continue
                    if answered is not None:
                        answered(endpoint, upstream.status, upstream.headers)
                    await self._relay(upstream, endpoint, send)
                    return
                finally:
                    # After a full answer this returns the connection to the pool; after a
                    # cancellation (client gone) it closes it, and the replica sees the end.
                    if upstream.content.at_eof():
                        upstream.release()
                    else:
                        upstream.close()
            finally:
                endpoint.inflight -= 1
                endpoint.finished += 1
        lookup = self.table.lookup(model)
        message = (
            f"No replica of model `{model}` can take the request now; retry shortly."
            if tried or lookup.known
            else f"The model `{model}` does not exist."
        )
        response = error_response(
            503,
            message,
            "service_unavailable",
            code="no_ready_replica",
            retry_after=self.settings.retry_after,
        )
        await response(scope, receive, send)

    def _preferred(self, url: str | None, model: str, tried: Sequence[Endpoint]) -> Endpoint | None:
        # Even while backing off: a 503 to retry is better than another replica's 404.
        for endpoint in self.table.endpoints():
            if endpoint.url == url and endpoint not in tried and model in endpoint.model_ids():
                return endpoint
        return None

    def _back_off(self, endpoint: Endpoint, retry_after: str | None) -> None:
        try:
            seconds = float(retry_after) if retry_after else 1.0
        except ValueError:
            seconds = 1.0
        endpoint.backoff_until = time.monotonic() + min(
            max(seconds, 0.0), self.settings.max_backoff
        )

    async def _relay(
        self, upstream: aiohttp.ClientResponse, endpoint: Endpoint, send: Send
    ) -> None:
        headers = [
            (name.lower(), value)
            for name, value in upstream.raw_headers
            if name.decode("latin-1").lower() not in DROPPED_RESPONSE_HEADERS
        ]
        if self.settings.backend_header:
            headers.append((BACKEND_HEADER.encode(), endpoint.url.encode()))
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        try:
            async for chunk in upstream.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("replica %s broke off its answer: %s", endpoint.url, error)
            if upstream.content_type == "text/event-stream":
                event = sse_error_event(
                    f"The replica serving this request failed: {error}", "server_error"
                )
                await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class ProxyResponse(Response):
    """A Starlette response that forwards the request when it is sent.

    The upstream request starts only here, inside the disconnect watch, so a client that leaves
    while the replica is still computing a non-streamed answer also closes the upstream request.
    """

    def __init__(
        self,
        proxy: Proxy,
        path: str,
        raw_body: bytes,
        body: Mapping[str, Any],
        headers: dict[str, str],
        *,
        hold: tuple[Waker, WakeTarget] | None = None,
        prefer: str | None = None,
        answered: Answered | None = None,
    ) -> None:
        super().__init__()
        self._proxy = proxy
        self._path = path
        self._raw_body = raw_body
        self._body = body
        self._upstream_headers = headers
        # A request for a model scaled to zero: it waits for a replica first (nim_gateway.wake).
        self._hold = hold
        self._prefer = prefer
        self._answered = answered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tasks:

            async def until_disconnect() -> None:
                message: Message = {}
                while message.get("type") != "http.disconnect":
                    message = await receive()
                tasks.cancel_scope.cancel()

            tasks.start_soon(until_disconnect)
            if await self._replica_in_time(scope, receive, send):
                await self._proxy.forward(
                    self._path,
                    self._raw_body,
                    self._body,
                    self._upstream_headers,
                    scope,
                    receive,
                    send,
                    prefer=self._prefer,
                    answered=self._answered,
                )
            tasks.cancel_scope.cancel()

    async def _replica_in_time(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """A request for a service at zero: wake it and wait for a replica. False after
        answering 429 (the wait is full) or 503 (no replica in time).

        Inside the disconnect watch, so a client that gives up leaves the wait at once; and
        here rather than in the route, so no place in the wait is taken by a response that is
        never sent."""
        if self._hold is None:
            return True
        waker, target = self._hold
        model = str(self._body["model"])
        hold = waker.admit(model, target)
        if hold is None:
            await waker.full(model)(scope, receive, send)
            return False
        if await waker.wait(hold):
            return True
        await waker.timed_out(hold)(scope, receive, send)
        return False
