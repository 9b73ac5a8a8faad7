"""The real `nim-gateway` process on a static backend list, one per arm (fresh state and CPU)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from tests.support.gateway_process import GatewayProcess, start_gateway
from tests.support.server_process import stop_session

__all__ = ["GatewayProcess", "running_gateway"]


def _wait_ready(gateway: GatewayProcess, *, scraped: bool, timeout: float = 120) -> None:
    """Ready (discovery listed everything once) and, if `scraped`, every replica read once:
    routing then sees real loads from the start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"nim-gateway exited:\n{gateway.log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            ready = httpx.get(gateway.base_url + "/v1/health/ready", timeout=5)
            if ready.status_code == 200 and not scraped:
                return
            if ready.status_code == 200:
                table = httpx.get(gateway.base_url + "/v1/gateway/backends", timeout=5).json()
                endpoints = [e for s in table["services"] for e in s["endpoints"]]
                if endpoints and all(e["healthy"] for e in endpoints):
                    return
        time.sleep(0.2)
    raise TimeoutError(f"nim-gateway never scraped its replicas:\n{gateway.log_path.read_text()}")


@contextlib.contextmanager
def running_gateway(
    work: Path, urls: list[str], routing: str, env: Mapping[str, str] | None = None
) -> Iterator[GatewayProcess]:
    """`nim-gateway --backend bench=URL ... --default-routing ROUTING`, default settings
    otherwise (a 1 s scrape), plus `env` (NIM_GATEWAY_*). Without `urls`, the gateway finds
    its replicas in Kubernetes (KUBECONFIG in `env`)."""
    options = ["--default-routing", routing]
    for url in urls:
        options += ["--backend", f"bench={url}"]
    gateway = start_gateway(work, options, env or {}, log_level="warning")
    try:
        _wait_ready(gateway, scraped=bool(urls))
        yield gateway
    finally:
        stop_session(gateway.process, 15)
