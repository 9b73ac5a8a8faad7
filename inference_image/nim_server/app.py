"""`build_app(settings, engine)`: the FastAPI application around one inference engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from nim_server import __version__
from nim_server.admission import Admission
from nim_server.engine import EngineFailure, EngineRequestError, EngineState, InferenceEngine
from nim_server.errors import APIError, from_validation_error
from nim_server.metrics import ServerMetrics
from nim_server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ErrorBody,
    ErrorResponse,
    TokenizeRequest,
)
from nim_server.protocol_responses import ResponseCreateRequest
from nim_server.routes import (
    health_router,
    management_router,
    metrics_router,
    openai_router,
    responses_router,
    tokenize_router,
)
from nim_server.routes.dependencies import ClientDisconnected, Services
from nim_server.serving import (
    ChatService,
    CompletionService,
    ModelService,
    ResponsesService,
    TokenizeService,
)
from nim_server.serving.adapters import AdapterRegistry
from nim_server.serving.common import as_api_error
from nim_server.serving.reasoning import ReasoningSettings
from nim_server.serving.response_store import ResponseStore
from nim_server.serving.tools import ToolSettings
from nim_server.settings import Settings

log = logging.getLogger(__name__)

INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
REJECTION_CODES = frozenset({"server_overloaded", "shutting_down"})
REQUEST_MODELS = (
    ChatCompletionRequest,
    CompletionRequest,
    ResponseCreateRequest,
    TokenizeRequest,
    DetokenizeRequest,
)
# Nginx's code for "client closed the request"; nobody reads it, but access logs show it.
CLIENT_CLOSED_REQUEST = 499


def build_app(
    settings: Settings, engine: InferenceEngine, metrics: ServerMetrics | None = None
) -> FastAPI:
    metrics = metrics or ServerMetrics()
    admission = Admission(settings.max_queue)
    metrics.admitted_sequences.set_function(lambda: admission.in_flight)
    adapters = (
        AdapterRegistry(
            engine, settings.peft_source, settings.max_lora_rank, settings.peft_refresh_interval
        )
        if settings.peft_source is not None
        else None
    )

    async def load() -> None:
        await engine.start()
        if engine.state is EngineState.READY:
            admission.set_engine_concurrency(engine.model.max_num_seqs)
            if adapters is not None:
                await adapters.run()  # until shutdown cancels it, when it rescans

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The port opens now; the model loads behind it so health probes answer meanwhile.
        loading = asyncio.create_task(load(), name="engine-load")
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await engine.stop()

    app = FastAPI(
        title="NIM-compatible inference server",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    chat = ChatService(
        engine,
        on_stream_error=metrics.request_failures.inc,
        tools=ToolSettings.from_settings(settings),
        reasoning=ReasoningSettings.from_settings(settings),
    )
    app.state.services = Services(
        settings=settings,
        engine=engine,
        adapters=adapters,
        metrics=metrics,
        admission=admission,
        chat=chat,
        completions=CompletionService(engine, on_stream_error=metrics.request_failures.inc),
        models=ModelService(engine),
        tokenizer=TokenizeService(engine),
        responses=ResponsesService(chat, engine, ResponseStore(settings.responses_store_bytes)),
    )
    for router in (
        openai_router,
        responses_router,
        health_router,
        metrics_router,
        management_router,
        tokenize_router,
    ):
        app.include_router(router)
    _describe_request_bodies(app)
    _install_error_handlers(app, metrics)
    return app


def _describe_request_bodies(app: FastAPI) -> None:
    """Put the request models, which the routes parse themselves, into the OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _, definitions = models_json_schema(
                [(model, "validation") for model in REQUEST_MODELS],
                ref_template="#/components/schemas/{model}",
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(definitions.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _install_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    def error_response(request: Request, error: APIError) -> Response:
        if request.url.path in INFERENCE_PATHS:
            metrics.request_failures.inc()
            if error.code in REJECTION_CODES:
                metrics.rejections.labels(reason=error.code).inc()
        return Response(
            error.envelope().model_dump_json(),
            status_code=error.status,
            media_type="application/json",
            headers=error.headers,
        )

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> Response:
        return error_response(request, error)

    @app.exception_handler(EngineRequestError)
    @app.exception_handler(EngineFailure)
    async def engine_error(request: Request, error: Exception) -> Response:
        # Raised by the engine adapter before any response started: the same mapping as
        # for errors that surface inside a stream.
        return error_response(request, as_api_error(error))

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(request: Request, error: RequestValidationError) -> Response:
        # FastAPI answers 422; OpenAI clients expect 400 with the parameter named.
        validation = ValidationError.from_exception_data("request", list(error.errors()))
        return error_response(request, from_validation_error(validation))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 404:
            message = f"Not found: {request.method} {request.url.path}"
            code = "not_found"
        elif error.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
            code = "method_not_allowed"
        else:
            message, code = str(error.detail), None
        return error_response(
            request,
            APIError(error.status_code, message, code=code, headers=dict(error.headers or {})),
        )

    @app.exception_handler(ClientDisconnected)
    async def client_disconnected(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = ErrorBody(
            message="Internal server error; see the server log.", type="internal_server_error"
        )
        if request.url.path in INFERENCE_PATHS:
            metrics.request_failures.inc()
        return Response(
            ErrorResponse(error=body).model_dump_json(),
            status_code=500,
            media_type="application/json",
        )
