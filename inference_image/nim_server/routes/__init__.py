"""HTTP routes: thin adapters from FastAPI requests to the serving layer."""

from nim_server.routes.health import router as health_router
from nim_server.routes.management import router as management_router
from nim_server.routes.metrics import router as metrics_router
from nim_server.routes.openai import router as openai_router
from nim_server.routes.responses import router as responses_router
from nim_server.routes.tokenize import router as tokenize_router

__all__ = [
    "health_router",
    "management_router",
    "metrics_router",
    "openai_router",
    "responses_router",
    "tokenize_router",
]
