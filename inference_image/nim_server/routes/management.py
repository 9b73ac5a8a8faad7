"""NIM management endpoints: /v1/version and /v1/metadata."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from nim_server import __version__
from nim_server.protocol import MetadataResponse, ModelInfo, VersionResponse
from nim_server.routes.dependencies import ServicesDep, require_api_key
from nim_server.serving.common import served_model

API_VERSION = "1.0.0"

router = APIRouter(tags=["management"], dependencies=[Depends(require_api_key)])


@router.get("/v1/version", response_model=VersionResponse)
async def version() -> VersionResponse:
    return VersionResponse(release=__version__, api=API_VERSION)


@router.get("/v1/metadata", response_model=MetadataResponse)
async def metadata(services: ServicesDep) -> MetadataResponse:
    model = served_model(services.engine, None)
    return MetadataResponse(
        version=__version__,
        modelInfo=[ModelInfo(modelUrl=model.source, shortName=model.name)],
    )
