"""Run `nim-gateway` as a real process on a free local port (the gateway tests and bench.gateway).

The gateway starts with this process's environment less its NIM_GATEWAY_* variables, plus the
caller's, so a setting in the shell never leaks into a test or a benchmark arm.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.support.server_process import LocalProcess, free_port

__all__ = ["GatewayProcess", "gateway_command", "start_gateway"]


def gateway_command() -> list[str]:
    """The console script next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("nim-gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nim_gateway"]


@dataclass
class GatewayProcess(LocalProcess):
    def cpu_seconds(self) -> float:
        """User + system CPU of the gateway process (it has no children)."""
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    async def backends(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=self.base_url, headers=self.headers) as client:
            response = await client.get("/v1/gateway/backends")
        response.raise_for_status()
        return [e for s in response.json()["services"] for e in s["endpoints"]]

    async def wait_for(self, predicate: Any, what: str, within: float = 30) -> None:
        """Poll `predicate` (sync or async), the event loop free meanwhile (for a test's stubs)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{what} did not happen:\n{self.log()[-3000:]}")


def start_gateway(
    work: Path, options: Sequence[str], env: Mapping[str, str], *, log_level: str
) -> GatewayProcess:
    """`nim-gateway --host 127.0.0.1 --port PORT --log-level LOG_LEVEL OPTIONS...`, in a
    session of its own (stop it with server_process.stop_session), its output in
    work/gateway-PORT.log. Not waited for."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [*gateway_command(), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--log-level", log_level, *options]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NIM_GATEWAY_")}
    log_path = work / f"gateway-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, env={**clean, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return GatewayProcess(process, port, log_path)
