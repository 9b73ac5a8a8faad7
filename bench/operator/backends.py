"""Where the NIMServices go: the API-server emulator, or the cluster KUBECONFIG points at.

Either way the benchmark, and the operator it measures, reach it only over HTTP through a
kubeconfig. What differs:

* the emulator is started fresh for each run (`python -m bench.operator.emulator`), so one run's
  objects never slow the next one, and it reports every request it served, from the server
  side: that is how requests per reconcile are counted;
* a real cluster keeps running; the benchmark applies crds/ to it, works in a namespace of its
  own, and deletes that namespace afterwards. It cannot count the operator's requests (that
  would take the API server's audit log), so those numbers are absent from such a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import yaml

from nim_operator.kube import ApiError, KubeClient, ResourceKind
from tests.support.kmock_cluster import PROJECT_CRDS, project_crds
from tests.support.kmock_harness import connection_from_kubeconfig, eventually, install_crds

REPO = Path(__file__).resolve().parents[2]
NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
# The benchmark's own requests carry this User-Agent; everything else the emulator serves in a
# run comes from the operator under test (kopf's requests and nim_operator.kube's).
BENCH_AGENT = "nimstack-bench"


@dataclass(frozen=True)
class Request:
    """One request the emulator served, as `bench.operator.emulator` records it."""

    at: float  # time.monotonic() when it arrived (the same clock in every local process)
    took: float | None  # seconds the emulator spent on it; None for watches
    agent: str
    method: str
    action: str  # list, watch, fetch, create, update, delete (kmock's reading of the request)
    resource: str
    name: str
    selector: str
    subresource: str
    content_type: str

    @property
    def is_write(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")


class Backend(Protocol):
    name: str
    kubeconfig: Path
    # True when nobody runs Deployments: the benchmark plays the kubelet (see scenario.py).
    emulated: bool

    async def start(self) -> None: ...

    @property
    def pid(self) -> int | None:
        """The API server's process id when it is local (the emulator), for psutil."""

    async def requests(self, since: int) -> tuple[int, list[Request]] | None:
        """(requests served so far, those from index `since` on); None if unknown."""

    async def cleanup(self, api: KubeClient, namespace: str) -> None:
        """Remove what a run left, while its operator still runs (it holds finalizers)."""

    async def stop(self) -> None: ...


class EmulatorBackend:
    """A fresh API-server emulator process per run."""

    name = "kmock"
    emulated = True

    def __init__(self, workdir: Path) -> None:
        self.kubeconfig = workdir / "kubeconfig"
        self._log = workdir / "emulator.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._control = ""
        self._session: aiohttp.ClientSession | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self._log.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "bench.operator.emulator", "--crds", str(PROJECT_CRDS)],
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO,
            )

    async def start(self) -> None:
        self._process = await asyncio.to_thread(self._spawn)
        assert self._process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self._process.stdout.readline), 60)
        if not line:
            raise RuntimeError(f"the emulator did not start:\n{self._log.read_text()[-2000:]}")
        endpoints = json.loads(line)
        self._control = endpoints["control"]
        self._session = aiohttp.ClientSession()
        self.kubeconfig.write_text(yaml.safe_dump(_kubeconfig(endpoints["url"])))

    async def requests(self, since: int) -> tuple[int, list[Request]]:
        assert self._session is not None
        url = f"{self._control}/requests"
        async with self._session.get(url, params={"since": str(since)}) as response:
            response.raise_for_status()
            body = await response.json()
        records = [
            Request(
                at=r["at"],
                took=r["took"],
                agent=r["agent"],
                method=r["method"],
                action=r["action"],
                resource=r["resource"],
                name=r["name"],
                selector=r["selector"],
                subresource=r["subresource"],
                content_type=r["content_type"],
            )
            for r in body["records"]
        ]
        return int(body["count"]), records

    async def cleanup(self, api: KubeClient, namespace: str) -> None:
        return None  # the whole emulator goes with stop()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._process is not None:
            self._process.terminate()
            try:
                await asyncio.to_thread(self._process.wait, 30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                await asyncio.to_thread(self._process.wait)
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None


class ClusterBackend:
    """The cluster KUBECONFIG points at; crds/ is applied to it once."""

    name = "cluster"
    emulated = False

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    @property
    def pid(self) -> None:
        return None

    async def start(self) -> None:
        api = KubeClient(connection_from_kubeconfig(self.kubeconfig), user_agent=BENCH_AGENT)
        try:
            await install_crds(api, project_crds(), field_manager=BENCH_AGENT)
        finally:
            await api.close()

    async def requests(self, since: int) -> None:
        return None

    async def cleanup(self, api: KubeClient, namespace: str) -> None:
        """Delete the NIMServices (the operator releases their finalizers), then the namespace."""
        gate = asyncio.Semaphore(16)

        async def delete(name: str) -> None:
            async with gate:
                await api.delete(NIMSERVICES, namespace, name)

        names = [n["metadata"]["name"] for n in await api.list(NIMSERVICES, namespace)]
        await asyncio.gather(*(delete(name) for name in names))

        async def released() -> bool:
            return not await api.list(NIMSERVICES, namespace)

        with contextlib.suppress(AssertionError):
            await eventually(released, within=60 + len(names) / 10, interval=1.0, what="cleanup")
        with contextlib.suppress(ApiError):
            await api.delete(NAMESPACES, None, namespace)

    async def stop(self) -> None:
        return None


def _kubeconfig(server: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "kmock", "user": {"token": "kmock-bench-token"}}],
        "contexts": [
            {"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}},
        ],
        "current-context": "kmock",
    }


def from_environment(workdir: Path) -> Backend:
    """A real cluster when KUBECONFIG is set, else the emulator."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        return ClusterBackend(Path(kubeconfig).expanduser())
    return EmulatorBackend(workdir)
