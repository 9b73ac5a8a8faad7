"""Prometheus scrape endpoints (unauthenticated, like NIM's, so scrapers need no secret)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from nim_server.engine import EngineState
from nim_server.routes.dependencies import ServicesDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
@router.get("/v1/metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    if services.engine.check_health() is EngineState.READY:
        services.metrics.max_requests.set(services.engine.model.max_num_seqs)
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
