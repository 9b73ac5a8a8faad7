"""Every request handler and dependency of the server is a coroutine function.

FastAPI runs a plain `def` endpoint or dependency in its thread pool: a hop to a worker thread
and back on every request, and a request that waits for a free thread when the pool is busy.
Nothing the routes do blocks, so none of them needs one.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from nim_server.routes import health_router, management_router, metrics_router, openai_router


def _callables(dependant: Dependant) -> Iterator[Any]:
    if dependant.call is not None:
        yield dependant.call
    for dependency in dependant.dependencies:
        yield from _callables(dependency)


def test_no_route_or_dependency_runs_in_the_thread_pool() -> None:
    routes = [
        route
        for router in (openai_router, health_router, metrics_router, management_router)
        for route in router.routes
        if isinstance(route, APIRoute)
    ]
    assert len(routes) >= 6
    calls = {call for route in routes for call in _callables(route.dependant)}
    names = {getattr(call, "__name__", repr(call)) for call in calls}
    assert {"get_services", "require_api_key"} <= names
    blocking = sorted(
        getattr(call, "__name__", repr(call))
        for call in calls
        if not inspect.iscoroutinefunction(call)
    )
    assert blocking == []
