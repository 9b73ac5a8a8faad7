"""The real `nim-gateway` process on a static backend list, one per arm (fresh state and CPU)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from tests.support.server_process import free_port, stop_session

__all__ = ["GatewayProcess", "running_gateway"]


def _command() -> list[str]:
    script = Path(sys.executable).with_name("nim-gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nim_gateway"]


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU of the gateway process (it has no children)."""
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def wait_ready(self, *, scraped: bool, timeout: float = 120) -> None:
        """Ready (discovery listed everything once) and, if `scraped`, every replica read once:
        routing then sees real loads from the start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nim-gateway exited:\n{self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                ready = httpx.get(self.base_url + "/v1/health/ready", timeout=5)
                if ready.status_code == 200 and not scraped:
                    return
                if ready.status_code == 200:
                    table = httpx.get(self.base_url + "/v1/gateway/backends", timeout=5).json()
                    endpoints = [e for s in table["services"] for e in s["endpoints"]]
                    if endpoints and all(e["healthy"] for e in endpoints):
                        return
            time.sleep(0.2)
        raise TimeoutError(f"nim-gateway never scraped its replicas:\n{self.log_path.read_text()}")


@contextlib.contextmanager
def running_gateway(
    work: Path, urls: list[str], routing: str, env: Mapping[str, str] | None = None
) -> Iterator[GatewayProcess]:
    """`nim-gateway --backend bench=URL ... --default-routing ROUTING`, default settings
    otherwise (a 1 s scrape), plus `env` (NIM_GATEWAY_*). Without `urls`, the gateway finds
    its replicas in Kubernetes (KUBECONFIG in `env`)."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [*_command(), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    argv += ["--default-routing", routing]
    for url in urls:
        argv += ["--backend", f"bench={url}"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NIM_GATEWAY_")}
    log_path = work / f"gateway-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            env={**clean, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    gateway = GatewayProcess(process, port, log_path)
    try:
        gateway.wait_ready(scraped=bool(urls))
        yield gateway
    finally:
        stop_session(process, 15)
