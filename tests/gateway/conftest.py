"""The gateway under test runs as the real `nim-gateway` process, on a static backend list.

Backends are either real `nim-serve` processes (test_gateway_e2e) or `StubReplica`s: small
aiohttp servers in the test's event loop that answer like nim-serve where the gateway looks
(/v1/models, /metrics, the three POST routes) and can be told to be slow, busy or failing.
A gateway that finds its backends in Kubernetes watches the API-server emulator
(tests/support/kmock_cluster), one per module: `cluster`, `kubeconfig`, `kube`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from aiohttp import web

# The tiny model the server tests build, shared by the end-to-end tests here.
from tests.server.conftest import tiny_model_dir
from tests.support.gateway_process import GatewayProcess, start_gateway
from tests.support.kmock_cluster import EmulatedCluster, project_crds
from tests.support.server_process import free_port, stop_session

# The emulator's admin token: the test code's own requests and the gateway's kubeconfig.
TOKEN = "kmock-test-token"


def pytest_configure(config: pytest.Config) -> None:
    # kmock 0.8 (the API-server emulator of test_discovery_kubernetes) loads its bundled
    # resource list with a deprecated importlib call.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:kmock.*")


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster(project_crds()) as emulated:
        yield emulated


@pytest.fixture(scope="module")
def kubeconfig(cluster: EmulatedCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cluster.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig", token=TOKEN)


@pytest_asyncio.fixture(loop_scope="session")
async def kube(cluster: EmulatedCluster) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=cluster.url, headers=headers) as client:
        yield client


def _spawn(
    work: Path, services: list[dict[str, Any]] | None, api_key: str | None, env: Mapping[str, str]
) -> GatewayProcess:
    work.mkdir(parents=True, exist_ok=True)
    options = []
    if services is not None:
        backends = work / "backends.yaml"
        backends.write_text(yaml.safe_dump({"services": services}))
        options += ["--backends-file", str(backends)]
    settings = {
        "NIM_GATEWAY_SCRAPE_INTERVAL": "0.2",
        **({"NIM_GATEWAY_API_KEY": api_key} if api_key else {}),
        **env,
    }
    return start_gateway(work, options, settings, log_level="info")


@contextlib.asynccontextmanager
async def running_gateway(
    work: Path,
    services: list[dict[str, Any]] | None,
    *,
    api_key: str | None = None,
    key_in_env: bool = True,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[GatewayProcess]:
    """`nim-gateway --backends-file` for `services` (None: from Kubernetes, as `env` says),
    ready and past its first scrape."""
    # `api_key` is what the harness sends; `key_in_env` also gives it to the gateway
    # (NIM_GATEWAY_API_KEY), otherwise the gateway must know it from elsewhere.
    gateway = _spawn(work, services, api_key if key_in_env else None, env or {})
    gateway.api_key = api_key
    process = gateway.process

    async def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"nim-gateway exited:\n{gateway.log()}")
        try:
            async with httpx.AsyncClient() as client:
                response = await client.get(gateway.base_url + "/v1/health/ready")
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def scraped() -> bool:
        return all(e["healthy"] is not None for e in await gateway.backends())

    try:
        await gateway.wait_for(ready, "readiness")
        await gateway.wait_for(scraped, "the first scrape of every replica")
        yield gateway
    finally:
        await asyncio.to_thread(stop_session, process, 15)


__all__ = ["TOKEN", "GatewayProcess", "StubReplica", "running_gateway", "tiny_model_dir"]


@dataclass
class StubReplica:
    """A replica stand-in. `mode`: "ok", "busy" (503 + Retry-After), "slow" (a long stream)."""

    models: list[dict[str, Any]]
    mode: str = "ok"
    running: float = 0.0
    chunk_delay: float = 0.0
    chunks: int = 3
    hits: int = 0
    open_streams: int = 0
    cancelled: int = 0
    last_body: dict[str, Any] = field(default_factory=dict)
    last_headers: dict[str, str] = field(default_factory=dict)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
            app.router.add_post(path, self._generate)
        # Like nim-serve, a handler learns of a dropped connection (aiohttp cancels it).
        self._runner = web.AppRunner(app, shutdown_timeout=1, handler_cancellation=True)
        await self._runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": self.models})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            text=f'num_requests_running{{model_name="x"}} {self.running}\n'
            'num_requests_waiting{model_name="x"} 0.0\n'
            'gpu_cache_usage_perc{model_name="x"} 0.0\n'
        )

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.last_body = await request.json()
        self.last_headers = dict(request.headers)
        if self.mode == "busy":
            return web.json_response(
                {"error": {"message": "busy", "type": "x", "param": None, "code": None}},
                status=503,
                headers={"Retry-After": "5"},
            )
        if not self.last_body.get("stream"):
            if self.mode == "slow":
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    self.cancelled += 1
                    raise
            return web.json_response({"object": "chat.completion", "served_by": self.port})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.open_streams += 1
        try:
            count = 10_000 if self.mode == "slow" else self.chunks
            for i in range(count):
                event = {"object": "chat.completion.chunk", "i": i, "served_by": self.port}
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
                await asyncio.sleep(self.chunk_delay)
            await response.write(b"data: [DONE]\n\n")
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        except ConnectionResetError:  # the gateway closed the connection: what we look for
            self.cancelled += 1
        finally:
            self.open_streams -= 1
        return response


@pytest.fixture
async def stubs() -> AsyncIterator[list[StubReplica]]:
    """Stub replicas a test creates with `stubs.append(...)`; started by `start_stubs`."""
    created: list[StubReplica] = []
    yield created
    for stub in created:
        await stub.stop()
