"""Run `nim-serve` as a real process (the image's entrypoint) on a free local port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nim_serve_command() -> list[str]:
    """The console script next to this interpreter: the same command the image runs."""
    script = Path(sys.executable).with_name("nim-serve")
    return [str(script)] if script.exists() else [shutil.which("nim-serve") or "nim-serve"]


@dataclass
class LocalProcess:
    """A process of ours listening on 127.0.0.1:`port`, its output in `log_path`."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    api_key: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class ServerProcess(LocalProcess):
    env: dict[str, str] = field(default_factory=dict)

    def wait_until(self, path: str, status: int, timeout: float) -> httpx.Response:
        """Poll ``path`` until it answers ``status``; fail with the server log otherwise."""
        deadline = time.monotonic() + timeout
        last: httpx.Response | Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nim-serve exited with {self.process.returncode}:\n{self.log()[-4000:]}"
                )
            try:
                last = httpx.get(self.base_url + path, headers=self.headers, timeout=5)
                if last.status_code == status:
                    return last
            except httpx.TransportError as error:
                last = error
            time.sleep(0.2)
        raise TimeoutError(
            f"{path} never answered {status} (last: {last!r}):\n{self.log()[-4000:]}"
        )

    def stop(self, timeout: float = 60) -> int:
        return stop_session(self.process, timeout)


def stop_session(process: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """SIGTERM a server started in a session of its own, then reap whatever is left of it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # An engine process outliving the server (e.g. after the kill above) would spin on the CPU
    # for the rest of the run and starve later tests or skew later measurements.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.returncode


def start_server(
    log_dir: Path,
    env: Mapping[str, str],
    *,
    api_key: str | None = None,
    args: list[str] | None = None,
) -> ServerProcess:
    port = free_port()
    # Start from a clean NIM_* environment so a developer's shell cannot change the tests.
    base = {k: v for k, v in os.environ.items() if not k.startswith("NIM_")}
    full_env = {**base, "NIM_SERVER_PORT": str(port), "NIM_SERVER_HOST": "127.0.0.1", **env}
    if api_key:
        full_env["NIM_API_KEY"] = api_key
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"nim-serve-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*nim_serve_command(), *(args or [])],
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so the engine's child processes can be found and reaped
        )
    return ServerProcess(
        process=process, port=port, log_path=log_path, api_key=api_key, env=full_env
    )


@contextlib.contextmanager
def ready_server(
    log_dir: Path,
    env: Mapping[str, str],
    *,
    api_key: str | None = None,
    timeout: float = 300,
) -> Iterator[ServerProcess]:
    """A started server once /v1/health/ready says 200; stopped, with its engine, on exit."""
    server = start_server(log_dir, env, api_key=api_key)
    try:
        server.wait_until("/v1/health/ready", 200, timeout=timeout)
        yield server
    finally:
        server.stop()
