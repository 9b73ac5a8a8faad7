"""NIM health endpoints, answered from the engine's lifecycle (never from a cached flag)."""

from __future__ import annotations

from fastapi import APIRouter

from nim_server.engine import EngineState
from nim_server.errors import service_unavailable
from nim_server.protocol import ErrorResponse, HealthResponse
from nim_server.routes.dependencies import ServicesDep
from nim_server.serving.common import LOADING_RETRY_AFTER

router = APIRouter(tags=["health"])


@router.get(
    "/v1/health/live",
    response_model=HealthResponse,
    responses={503: {"model": ErrorResponse, "description": "The engine is dead or failed"}},
)
async def live(services: ServicesDep) -> HealthResponse:
    # Alive while loading (a large model takes minutes); not alive once the engine can never
    # serve again, so the kubelet restarts the container.
    engine = services.engine
    if engine.check_health() in (EngineState.FAILED, EngineState.DEAD):
        raise service_unavailable(
            f"Service is not live: {engine.reason}.", retry_after=30, code="engine_unavailable"
        )
    return HealthResponse(message="Service is live.", status="alive")


@router.get(
    "/v1/health/ready",
    response_model=HealthResponse,
    responses={503: {"model": ErrorResponse, "description": "Not ready, with the reason"}},
)
async def ready(services: ServicesDep) -> HealthResponse:
    engine = services.engine
    state = engine.check_health()
    if services.admission.draining:
        # Leave the Service's endpoints before the last requests finish.
        raise service_unavailable(
            "Service is not ready: the server is shutting down.",
            retry_after=1,
            code="shutting_down",
        )
    if state is not EngineState.READY:
        retry = LOADING_RETRY_AFTER if state is EngineState.LOADING else 30
        raise service_unavailable(
            f"Service is not ready: {engine.reason}.", retry_after=retry, code=f"engine_{state}"
        )
    if services.adapters is not None and not services.adapters.scanned:
        # Traffic for an adapter sent now would get a 404 it should not.
        raise service_unavailable(
            "Service is not ready: the LoRA adapters are loading.",
            retry_after=1,
            code="adapters_loading",
        )
    return HealthResponse(message="Service is ready.", status="ready")
