"""Pods for the autoscaler's tests on kmock: real metrics endpoints, emulated scheduling.

kmock has no ReplicaSet controller, scheduler or kubelet, and there are no GPUs here, so
`FakeReplicaSet` plays them for one Deployment, continuously: it keeps as many Pods as the
Deployment's `spec.replicas` asks for, each Ready with a `status.podIP` on a loopback address of
its own (127.0.0.x), or Pending as Unschedulable with the scheduler's "Insufficient
nvidia.com/gpu" message once `schedulable` pods exist; and it writes the Deployment's status.

What is *not* faked is what the operator reads from a pod: each ready pod runs a real HTTP
server on <podIP>:<port> serving `/v1/metrics` as Prometheus text, rendered by prometheus_client
from gauges under the names our inference server exports. The test sets the service's total
load (`running`, `waiting`); it is spread evenly over the ready pods, as the Service spreads
requests. A pod can be made `dead` (its server closed: connection refused) or `garbage` (200
with a body that is not Prometheus text).

The port is the container port named `api` in the Deployment's pod template, as for a real pod
(the operator reads it from the pod). Tests set it with NIM_SERVER_PORT to `free_port()` rather
than the default 8000: on a shared machine another process may listen on 0.0.0.0:8000, and it
would answer for a pod whose own server was stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from nim_operator.kube import KubeClient, ResourceKind

DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
PODS = ResourceKind("v1", "pods")
DEFAULT_PORT = 8000
# Loopback addresses handed to pods; 127.0.0.1 is left to everything else.
_ADDRESSES = [f"127.0.0.{n}" for n in range(2, 255)]
_taken: set[str] = set()


def free_port() -> int:
    """A TCP port nothing listens on at the moment (on any address)."""
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        port: int = probe.getsockname()[1]
        return port


def api_port(template_spec: Mapping[str, Any]) -> int:
    for container in template_spec.get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "api":
                return int(port["containerPort"])
    return DEFAULT_PORT


def _rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Load:
    """What the whole service is doing; each ready pod reports an even share."""

    running: float = 0.0
    waiting: float = 0.0
    kv_cache: float = 0.0
    capacity: float = 64.0  # num_request_max of each pod
    # Requests finished so far (request_finish_total), counted on every ready pod alike: raising
    # it is traffic that came and went between two scrapes.
    finished: float = 0.0


class PodServer:
    """One pod's metrics endpoint on its own loopback address."""

    def __init__(self, owner: FakeReplicaSet, port: int) -> None:
        self._owner = owner
        self.port = port
        self.ip = ""
        self.mode = "ok"  # "ok", "dead" (connection refused), "garbage" or "no-kv"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        for address in _ADDRESSES:
            if address in _taken:
                continue
            try:
                await self.listen(address)
            except OSError:
                continue  # in use by something else: try the next address
            _taken.add(address)
            self.ip = address
            return
        raise RuntimeError("no free loopback address for a fake pod")

    async def listen(self, address: str) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/v1/metrics", self._metrics)
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, address, self.port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner

    async def close_listener(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def stop(self) -> None:
        await self.close_listener()
        _taken.discard(self.ip)

    async def _chat(self, request: web.Request) -> web.Response:
        """A canned answer (for a gateway in front), counted as a finished request."""
        self._owner.load.finished += 1
        answer = {"object": "chat.completion", "served_by": self.ip, "choices": []}
        return web.json_response(answer)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.mode == "garbage":
            return web.Response(text="<html>this is not Prometheus text{{{</html>\n")
        share = self._owner.share()
        registry = CollectorRegistry()
        gauges = {
            "vllm:num_requests_running": share.running,
            "vllm:num_requests_waiting": share.waiting,
            "vllm:kv_cache_usage_perc": share.kv_cache,
            "num_requests_running": share.running,
            "num_requests_waiting": share.waiting,
            "gpu_cache_usage_perc": share.kv_cache,
            "num_request_max": share.capacity,
        }
        if self.mode == "no-kv":  # a server that does not export its KV-cache use
            gauges = {k: v for k, v in gauges.items() if "cache" not in k}
        for metric, value in gauges.items():
            labels = ["model_name"] if metric.startswith("vllm:") else []
            gauge = Gauge(metric, f"{metric} of the fake pod", labels, registry=registry)
            (gauge.labels("fake-model") if labels else gauge).set(value)
        finished = Counter("request_finish", "requests finished by the fake pod", registry=registry)
        finished.inc(share.finished)
        return web.Response(body=generate_latest(registry), content_type="text/plain")


@dataclass
class FakeReplicaSet:
    """ReplicaSet controller, scheduler and kubelet for one Deployment, run as a task."""

    api: KubeClient
    namespace: str
    deployment: str
    load: Load = field(default_factory=Load)
    # How many pods fit on the cluster's GPU nodes; None: all of them.
    schedulable: int | None = None
    period: float = 0.2
    servers: dict[str, PodServer] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None
    _port: int = DEFAULT_PORT

    def share(self) -> Load:
        ready = max(1, len(self.servers))
        return Load(
            running=self.load.running / ready,
            waiting=self.load.waiting / ready,
            kv_cache=self.load.kv_cache,
            capacity=self.load.capacity,
            finished=self.load.finished,
        )

    async def kill(self, mode: str = "dead", *, count: int = 1) -> list[str]:
        """Make `count` ready pods' endpoints fail; returns their names.

        "dead": the pod stays Ready with its IP, but nothing listens there any more.
        "garbage": it answers 200 with a body that is not Prometheus text.
        "no-kv": valid metrics, but no KV-cache gauge.
        """
        names = sorted(n for n, server in self.servers.items() if server.mode == "ok")[:count]
        for name in names:
            server = self.servers[name]
            server.mode = mode
            if mode == "dead":
                await server.close_listener()
        return names

    async def revive(self) -> None:
        for server in self.servers.values():
            await server.listen(server.ip)
            server.mode = "ok"

    async def __aenter__(self) -> FakeReplicaSet:
        """Follow the Deployment continuously (every `period` seconds) until exit."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop following and close every pod's server (also after manual `sync` calls)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for server in self.servers.values():
            await server.stop()
        self.servers.clear()

    async def _run(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(self.period)

    async def sync(self) -> None:
        live = await self.api.get(DEPLOYMENTS, self.namespace, self.deployment)
        if live is None:
            return
        desired = int(live["spec"].get("replicas", 1))
        labels = live["spec"]["template"]["metadata"]["labels"]
        selector = ",".join(
            f"{k}={v}" for k, v in sorted(live["spec"]["selector"]["matchLabels"].items())
        )
        pods = await self.api.list(PODS, self.namespace, label_selector=selector)
        names = [p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")]
        # Scale down as the ReplicaSet controller does: unscheduled pods go first.
        surplus = len(names) - desired
        if surplus > 0:
            doomed = sorted(names, key=lambda n: (n not in self.pending, n))
            for name in doomed[:surplus]:
                await self._delete(name)
        for _ in range(desired - len(names)):
            await self._create(live, labels)
        # Capacity may have grown (a node was added): schedule pending pods that now fit.
        for name in sorted(self.pending):
            if self.schedulable is None or len(self.servers) < self.schedulable:
                await self._run_pod(name)
        await self._write_deployment_status(live, desired)

    async def _create(self, live: Mapping[str, Any], labels: Mapping[str, str]) -> None:
        name = f"{self.deployment}-{secrets.token_hex(3)}"
        await self.api.create(
            PODS,
            self.namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": dict(labels)},
                "spec": live["spec"]["template"]["spec"],
            },
        )
        self._port = api_port(live["spec"]["template"]["spec"])
        if self.schedulable is not None and len(self.servers) >= self.schedulable:
            self.pending.add(name)
            await self._set_pod_status(name, _unschedulable_status())
        else:
            await self._run_pod(name)

    async def _run_pod(self, name: str) -> None:
        server = PodServer(self, self._port)
        await server.start()
        self.servers[name] = server
        self.pending.discard(name)
        await self._set_pod_status(name, _ready_status(server.ip))

    async def _delete(self, name: str) -> None:
        await self.api.delete(PODS, self.namespace, name)
        self.pending.discard(name)
        server = self.servers.pop(name, None)
        if server is not None:
            await server.stop()

    async def _set_pod_status(self, name: str, status: dict[str, Any]) -> None:
        await self.api.merge_patch(
            PODS, self.namespace, name, {"status": status}, subresource="status"
        )

    async def _write_deployment_status(self, live: Mapping[str, Any], desired: int) -> None:
        ready = min(desired, len(self.servers))
        status = {
            "observedGeneration": live["metadata"].get("generation", 1),
            "replicas": desired,
            "updatedReplicas": desired,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        if any(live.get("status", {}).get(k) != v for k, v in status.items()):
            await self.api.merge_patch(
                DEPLOYMENTS,
                self.namespace,
                self.deployment,
                {"status": status},
                subresource="status",
            )


def _ready_status(ip: str) -> dict[str, Any]:
    now = _rfc3339()
    return {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": "172.18.0.2",
        "startTime": now,
        "conditions": [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ],
        "containerStatuses": [
            {
                "name": "nim",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "image": "nimstack/nim-server:0.1.0",
                "imageID": "",
                "state": {"running": {"startedAt": now}},
            }
        ],
    }


def _unschedulable_status() -> dict[str, Any]:
    return {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "lastTransitionTime": _rfc3339(),
                "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: "
                "0/2 nodes are available: 2 No preemption victims found for incoming pod.",
            }
        ],
    }
