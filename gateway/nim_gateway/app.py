"""`build_app(settings)`: the gateway's routes, and a lifespan that owns every background task.

Routes: POST /v1/chat/completions, /v1/completions, /v1/responses (forwarded by `model`);
GET/DELETE /v1/responses/{id} (to the replica that stored it: nim_gateway.stored_responses);
GET /v1/models[/{id}] (every model a ready replica serves); GET /v1/health/live|ready;
GET /v1/gateway/backends (the backend table, for operators: needs a key valid for every model).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nim_gateway.auth import KeySet, bearer_token, keys_from_file, keys_from_secret
from nim_gateway.backends import BackendTable, WakeTarget
from nim_gateway.discovery import KubernetesDiscovery, static_services
from nim_gateway.errors import error_response
from nim_gateway.kube import ApiError, KubeApi, connection_from_environment
from nim_gateway.load import Scraper
from nim_gateway.proxy import Proxy, ProxyResponse, Router
from nim_gateway.response_affinity import RECENT_MISSES_ENTRIES, RecentMisses, ResponseAffinity
from nim_gateway.settings import GatewaySettings
from nim_gateway.stored_responses import Placement, StoredResponses
from nim_gateway.wake import Waker

__all__ = ["Gateway", "build_app"]

log = logging.getLogger(__name__)

FORWARDED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
# Idle pooled connections are dropped before uvicorn's own 5 s keep-alive ends on the replica:
# reusing a connection the server is closing fails the request with "server disconnected".
UPSTREAM_KEEPALIVE_SECONDS = 4.0


@dataclass
class Gateway:
    """What the routes read: the settings, the table, the proxy, and the current keys."""

    settings: GatewaySettings
    table: BackendTable
    keys: KeySet = field(default_factory=KeySet)
    proxy: Proxy | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Holds requests for NIMServices at zero replicas and wakes them (Kubernetes discovery only).
    waker: Waker | None = None
    # Where stored Responses are (GET/DELETE /v1/responses/{id}, previous_response_id).
    stored: StoredResponses | None = None


def initial_keys(settings: GatewaySettings) -> KeySet:
    keys = KeySet()
    if settings.api_key:
        keys = keys.merged(KeySet(frozenset({settings.api_key}), enabled=True))
    if settings.api_keys_file is not None:
        keys = keys.merged(keys_from_file(settings.api_keys_file))
    if settings.api_key_secret:
        keys = keys.merged(KeySet(enabled=True))  # closed until the Secret has been read
    return keys


def build_app(settings: GatewaySettings | None = None) -> Starlette:
    settings = settings or GatewaySettings()
    settings.secret_ref()  # a malformed reference fails here, not after start-up
    gateway = Gateway(settings, BackendTable(), initial_keys(settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=settings.max_connections, keepalive_timeout=UPSTREAM_KEEPALIVE_SECONDS
                ),
                # Bytes pass through as the replica encoded them.
                auto_decompress=False,
            )
            stack.push_async_callback(session.close)
            gateway.proxy = Proxy(settings, gateway.table, Router(settings), session)
            gateway.stored = StoredResponses(
                gateway.proxy,
                ResponseAffinity(settings.response_affinity_entries),
                RecentMisses(RECENT_MISSES_ENTRIES, settings.response_miss_ttl),
            )
            tasks: list[asyncio.Task[None]] = []
            stack.callback(lambda: [task.cancel() for task in tasks])

            def start(coroutine: Coroutine[Any, Any, None]) -> None:
                tasks.append(asyncio.create_task(_logged(coroutine)))

            api: KubeApi | None = None
            if not settings.uses_static_backends() or settings.api_key_secret:
                api = KubeApi(connection_from_environment())
                stack.push_async_callback(api.close)
            if settings.uses_static_backends():
                gateway.table.sync(static_services(settings.backends_file, settings.backends))
                gateway.ready.set()
            else:
                assert api is not None
                discovery = KubernetesDiscovery(api, gateway.table, settings.namespace_list())
                start(discovery.run())
                gateway.waker = Waker(settings, gateway.table, api)
                stack.push_async_callback(gateway.waker.close)
                start(_set_when(discovery.synced, gateway.ready))
            if api is not None and settings.api_key_secret:
                base = initial_keys(settings.model_copy(update={"api_key_secret": None}))
                await _refresh_keys(api, gateway, base)
                start(_keep_refreshing_keys(api, gateway, base))
            scraper_headers = (
                {"Authorization": f"Bearer {settings.backend_api_key}"}
                if settings.backend_api_key
                else {}
            )
            scraper = Scraper(
                session,
                gateway.table,
                interval=settings.scrape_interval,
                timeout=settings.scrape_timeout,
                headers=scraper_headers,
            )
            start(scraper.run())
            app.state.gateway = gateway
            yield
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    routes = [
        *(Route(path, _forwarded(path), methods=["POST"]) for path in FORWARDED_PATHS),
        Route("/v1/responses/{response_id}", _stored_response, methods=["GET", "DELETE"]),
        Route("/v1/models", _list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", _get_model, methods=["GET"]),
        Route("/v1/health/live", _live, methods=["GET"]),
        Route("/v1/health/ready", _ready, methods=["GET"]),
        Route("/v1/gateway/backends", _backends, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.gateway = gateway
    return app


async def _logged(coroutine: Coroutine[Any, Any, None]) -> None:
    try:
        await coroutine
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("a background task of the gateway failed")
        raise


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _refresh_keys(api: KubeApi, gateway: Gateway, base: KeySet) -> None:
    namespace, name = gateway.settings.secret_ref() or ("", "")
    try:
        secret = await api.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
    except ApiError as error:
        if error.status != 404:
            raise
        log.warning("Secret %s/%s not found: only the other key sources apply", namespace, name)
        gateway.keys = base.merged(KeySet(enabled=True))
        return
    gateway.keys = base.merged(keys_from_secret(secret))


async def _keep_refreshing_keys(api: KubeApi, gateway: Gateway, base: KeySet) -> None:
    while True:
        await asyncio.sleep(gateway.settings.secret_refresh_interval)
        try:
            await _refresh_keys(api, gateway, base)
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            # Keep the last keys: an API server hiccup must not lock every client out.
            log.warning("could not re-read the API key Secret: %s", error)


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _unauthorized(message: str) -> JSONResponse:
    return error_response(401, message, "invalid_request_error", code="invalid_api_key")


def _forwarded(path: str) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    async def endpoint(request: Request) -> Response:
        gateway = _gateway(request)
        key = bearer_token(request.headers.get("authorization"))
        if not gateway.keys.known(key):
            return _unauthorized("Missing or invalid API key (Authorization: Bearer <key>).")
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return error_response(400, "The body is not valid JSON.", "invalid_request_error")
        if not isinstance(body, dict):
            return error_response(400, "The body must be a JSON object.", "invalid_request_error")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return error_response(
                400,
                "`model` is required: the gateway routes by it (GET /v1/models lists them).",
                "invalid_request_error",
                param="model",
            )
        if not gateway.keys.allows(key, model):
            return _unauthorized(f"This API key is not valid for model `{model}`.")
        lookup = gateway.table.lookup(model)
        if not lookup.known:
            return _model_not_found(model)
        hold: tuple[Waker, WakeTarget] | None = None
        if not lookup.candidates:
            if lookup.wake is None or gateway.waker is None:
                return error_response(
                    503,
                    f"No replica of model `{model}` is ready; retry shortly.",
                    "service_unavailable",
                    code="no_ready_replica",
                    retry_after=gateway.settings.retry_after,
                )
            # A service that scales to zero: the response wakes it and waits for a replica.
            hold = (gateway.waker, lookup.wake)
        assert gateway.proxy is not None
        assert gateway.stored is not None
        headers = gateway.proxy.upstream_headers(request.headers)
        placement = Placement(None, None)
        if path == "/v1/responses":
            placed = await gateway.stored.place(
                body, model, headers, lambda stored_model: gateway.keys.allows(key, stored_model)
            )
            if isinstance(placed, Response):
                return placed
            placement = placed
        return ProxyResponse(
            gateway.proxy,
            path,
            raw,
            body,
            headers,
            hold=hold,
            prefer=placement.prefer,
            answered=placement.answered,
        )

    return endpoint


async def _stored_response(request: Request) -> Response:
    gateway = _gateway(request)
    key = bearer_token(request.headers.get("authorization"))
    if not gateway.keys.known(key):
        return _unauthorized("Missing or invalid API key (Authorization: Bearer <key>).")
    assert gateway.stored is not None
    return await gateway.stored.serve(
        request.method,
        request.path_params["response_id"],
        request.url.query,
        gateway.stored.proxy.upstream_headers(request.headers),
        lambda model: gateway.keys.allows(key, model),
    )


def _model_not_found(model: str) -> JSONResponse:
    return error_response(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        param="model",
        code="model_not_found",
    )


def _visible_cards(request: Request) -> list[dict[str, Any]] | JSONResponse:
    gateway = _gateway(request)
    key = bearer_token(request.headers.get("authorization"))
    if not gateway.keys.known(key):
        return _unauthorized("Missing or invalid API key (Authorization: Bearer <key>).")
    return [
        card
        for card in gateway.table.model_cards()
        if gateway.keys.allows(key, str(card.get("id")))
    ]


async def _list_models(request: Request) -> Response:
    cards = _visible_cards(request)
    if isinstance(cards, Response):
        return cards
    return JSONResponse({"object": "list", "data": cards})


async def _get_model(request: Request) -> Response:
    cards = _visible_cards(request)
    if isinstance(cards, Response):
        return cards
    model = request.path_params["model"]
    for card in cards:
        if card.get("id") == model:
            return JSONResponse(card)
    return _model_not_found(model)


async def _live(request: Request) -> Response:
    return JSONResponse(
        {"object": "health.response", "message": "Gateway is alive.", "status": "alive"}
    )


async def _ready(request: Request) -> Response:
    if _gateway(request).ready.is_set():
        return JSONResponse(
            {"object": "health.response", "message": "Gateway is ready.", "status": "ready"}
        )
    return JSONResponse(
        {
            "object": "health.response",
            "message": "Discovery has not synced.",
            "status": "not ready",
        },
        status_code=503,
    )


async def _backends(request: Request) -> Response:
    gateway = _gateway(request)
    if not gateway.keys.is_global(bearer_token(request.headers.get("authorization"))):
        return _unauthorized("The backend table needs a key valid for every model.")
    held = gateway.waker.held_by_model() if gateway.waker is not None else {}
    return JSONResponse({"services": gateway.table.describe(), "held": held})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    response = error_response(exc.status_code, str(exc.detail), kind)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "The gateway failed to handle the request.", "server_error")
