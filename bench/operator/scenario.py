"""One run: N NIMServices applied to a fresh namespace, with one operator process watching it.

1. **Burst**: create N NIMServices, `concurrency` at a time, as fast as the API server takes
   them; wait until each has its Deployment and Service and its status written (and, on the
   emulator, its pod ready).
2. **Settle**: until nobody but the operator has changed anything in the namespace for `settle`
   seconds (at most `settle_max`): on a real cluster the controller manager goes on creating
   ReplicaSets and Pods and updating Deployment status for minutes after a large burst, and the
   operator reports the latter in each NIMService's status. Who changed what meanwhile is
   recorded (`attribution.py`).
3. **Idle**: a window of `window` seconds (by default one timer interval) in which nothing
   happens but the operator's own timers: its RSS and CPU (psutil), the requests it makes, and
   what changed in the namespace, by whom (the operator's writes here should be none).
4. **Probe**: `probes` more NIMServices, one at a time, each only after the previous one is
   done: the reaction time of an operator that already manages N objects.
5. **Restart**: the operator is stopped and a new process takes over what is there, as after a
   rollout or a crash. It lists every watched object at once, the most it holds in memory at
   one moment, and must change nothing: its RSS (peak, and at the end of a `window`), its CPU,
   when it made its last request, and what changed in the namespace.

Every latency is measured from the moment the API server acknowledged the create to the moment
the benchmark's watch saw the milestone (`timeline.py`), so it includes the API server's watch
delivery - to the operator and back to us - as a user would see it.

On the emulator nothing runs Deployments, so the benchmark plays the kubelet and the Deployment
controller (tests/support's `EmulatedControllers`): each new Deployment gets its pod, running
and ready, and its status, as a real cluster would report them. That is what makes the operator
reconcile a second time and report Ready, as it would on a real cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.operator.attribution import Change, is_operator, summarize
from bench.operator.backends import BENCH_AGENT, NAMESPACES, NIMSERVICES, REPO, Backend, Request
from bench.operator.timeline import Timeline
from nim_operator.kube import ApiError, KubeClient
from tests.support.kmock_harness import (
    EmulatedControllers,
    OperatorProcess,
    PodState,
    connection_from_kubeconfig,
)

# The operator as its image runs it (manifests/deployment.yaml), and the do-nothing baseline.
OPERATORS = {
    "nimstack": "nim_operator.handlers",
    "noop": "bench.operator.noop_operator",
}
# What "done" means for each: our operator has to produce children and status; the baseline
# only has to have run its (empty) handlers.
DONE = {
    "nimstack": ("children", "observed", "handled"),
    "noop": ("handled",),
}
OPERATOR_AGENT = "nimstack-operator"  # nim_operator.kube's User-Agent (kopf's is kopf/<version>)
MIB = 2**20


@dataclass(frozen=True)
class RunConfig:
    count: int
    operator: str = "nimstack"
    interval: float = 60.0  # NIM_OPERATOR_RECONCILE_INTERVAL (the image's default)
    window: float = 60.0
    settle: float = 10.0  # quiet seconds (no change by anyone but the operator) before idle
    settle_max: float = 300.0  # the most to wait for them
    probes: int = 10
    replicas: int = 1
    concurrency: int = 8
    timeout: float | None = None  # for the burst to converge; by default grows with N

    @property
    def burst_timeout(self) -> float:
        return self.timeout if self.timeout is not None else 120.0 + self.count * 0.5


def nimservice(name: str, replicas: int) -> dict[str, Any]:
    """A NIMService that runs on any cluster: no GPU, the pause image, no probes."""
    return {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": name},
        "spec": {
            "image": {"repository": "registry.k8s.io/pause", "tag": "3.10"},
            "gpu": {"count": 0},
            "replicas": replicas,
            "shutdownTimeoutSeconds": 0,
            "livenessProbe": {"enabled": False},
            "readinessProbe": {"enabled": False},
            "startupProbe": {"enabled": False},
        },
    }


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class Sampler:
    """RSS and CPU time of one process, every `period` seconds, in the background."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, float, float]] = []  # (monotonic, rss MiB, cpu s)
        self._period = period
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> tuple[float, float, float]:
        with self.process.oneshot():
            times = self.process.cpu_times()
            rss = self.process.memory_info().rss / MIB
        point = (time.monotonic(), rss, times.user + times.system)
        self.samples.append(point)
        return point

    def start(self) -> None:
        async def loop() -> None:
            while True:
                try:
                    self.sample()
                except psutil.Error:
                    return
                await asyncio.sleep(self._period)

        self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def between(self, start: float, end: float) -> list[tuple[float, float, float]]:
        return [s for s in self.samples if start <= s[0] <= end]


def verb(request: Request) -> str:
    """What kind of request, in the words of the report."""
    if request.method == "PATCH":
        if request.content_type == "application/apply-patch+yaml":
            return "apply"
        return "patch status" if request.subresource == "status" else "patch"
    return {
        "fetch": "get",
        "list": "list",
        "watch": "watch",
        "create": "create",
        "delete": "delete",
    }.get(request.action, request.method.lower())


def is_reconcile(request: Request) -> bool:
    """Each reconcile of a valid spec applies its Deployment exactly once (_sync_children).

    (Not the pod list: timer ticks take the pods from the operator's watch.)
    """
    return (
        request.agent.startswith(OPERATOR_AGENT)
        and verb(request) == "apply"
        and request.resource == "deployments"
    )


def request_stats(requests: list[Request], objects: int | None = None) -> dict[str, Any]:
    """Counts of the operator's requests (watches excepted) in one phase."""
    calls = [r for r in requests if r.action != "watch"]
    reconciles = sum(1 for r in calls if is_reconcile(r))
    by_verb = Counter(verb(r) for r in calls)
    by_client = Counter("kopf" if r.agent.startswith("kopf") else "nim_operator" for r in calls)
    per = reconciles or None
    stats: dict[str, Any] = {
        "requests": len(calls),
        "writes": sum(1 for r in calls if r.is_write),
        "reconciles": reconciles,
        "per_reconcile": _round(len(calls) / per, 2) if per else None,
        "writes_per_reconcile": _round(sum(r.is_write for r in calls) / per, 2) if per else None,
        "by_verb": dict(sorted(by_verb.items())),
        "by_client": dict(sorted(by_client.items())),
    }
    if objects:
        stats["per_object"] = _round(len(calls) / objects, 2)
        stats["reconciles_per_object"] = _round(reconciles / objects, 2)
    took = [r.took * 1000 for r in calls if r.took is not None]
    stats["emulator_p50_ms"] = _round(percentile(took, 0.5), 2)
    stats["emulator_p99_ms"] = _round(percentile(took, 0.99), 2)
    return stats


def operator_status_write(change: Change) -> bool:
    """A NIMService status change the operator's status writes made."""
    return (
        change.kind == "nimservices"
        and change.event == "MODIFIED"
        and "status" in change.areas
        and any(is_operator(w) and w.endswith(" status") for w in change.writers)
    )


def is_status_patch(request: Request) -> bool:
    """nim_operator's write of a NIMService's status (a merge patch of /status)."""
    return (
        request.agent.startswith(OPERATOR_AGENT)
        and request.method == "PATCH"
        and request.resource == "nimservices"
        and request.subresource == "status"
    )


def status_writes(changes: list[Change], requests: list[Request] | None) -> dict[str, Any]:
    """The operator's NIMService status writes in one phase: the patches it sent (from the
    emulator's request log; None elsewhere) and those that changed something (the watch's
    MODIFIED events). The API server emits no event for a write that changes nothing, so
    `unchanged` is the difference. Near a phase's edges an event can arrive after its request's
    phase ended, which shows as a difference of one."""
    modified = sum(1 for c in changes if operator_status_write(c))
    patches = None if requests is None else sum(1 for r in requests if is_status_patch(r))
    return {
        "patches": patches,
        "modified": modified,
        "unchanged": None if patches is None else max(0, patches - modified),
    }


def _samples(timeline: Timeline, acked: dict[str, float], milestone: str) -> list[float]:
    """Seconds from each create's acknowledgement to the milestone, for those that reached it."""
    return [
        round(reached - acked[name], 4)
        for name in acked
        if (reached := timeline.reached(name, milestone)) is not None
    ]


def latencies(
    timeline: Timeline, acked: dict[str, float], milestone: str
) -> dict[str, float | None]:
    values = _samples(timeline, acked, milestone)
    return {
        f"{milestone}_p50_s": _round(percentile(values, 0.5)),
        f"{milestone}_p99_s": _round(percentile(values, 0.99)),
        f"{milestone}_max_s": _round(max(values) if values else None),
    }


class Run:
    """Everything one run needs, from a fresh namespace and operator to the cleanup."""

    def __init__(self, backend: Backend, config: RunConfig, workdir: Path) -> None:
        self.backend = backend
        self.config = config
        self.namespace = f"nimbench-{secrets.token_hex(3)}"
        self.api = KubeClient(
            connection_from_kubeconfig(backend.kubeconfig), user_agent=BENCH_AGENT
        )
        self.timeline = Timeline(
            connection_from_kubeconfig(backend.kubeconfig),
            self.namespace,
            agent=BENCH_AGENT,
            on_first=self._on_first,
        )
        # Both as the image starts the operator: kopf's CLI by way of `nim-operator`.
        cli = Path(sys.executable).with_name("nim-operator")
        self.operator = OperatorProcess(
            backend.kubeconfig,
            workdir / f"{config.operator}-{config.count}-{self.namespace}.log",
            argv=[
                str(cli),
                "run",
                "-m",
                OPERATORS[config.operator],
                "--standalone",
                f"--namespace={self.namespace}",
                "--liveness={liveness}",
            ],
            env={"PYTHONPATH": str(REPO)},  # the baseline lives in bench/, not in the package
            reconcile_interval=str(config.interval),
        )
        self.controllers = EmulatedControllers(self.api)
        self.kubelet_gate = asyncio.Semaphore(4)
        self.kubelet_tasks: list[asyncio.Task[None]] = []
        self.create_rtts: list[float] = []

    @property
    def plays_kubelet(self) -> bool:
        return self.backend.emulated and self.config.replicas > 0

    @property
    def done(self) -> tuple[str, ...]:
        extra = ("ready",) if self.plays_kubelet and self.config.operator == "nimstack" else ()
        return DONE[self.config.operator] + extra

    async def create(self, name: str) -> float:
        sent = time.monotonic()
        try:
            await self.api.create(
                NIMSERVICES, self.namespace, nimservice(name, self.config.replicas)
            )
        except ApiError as e:
            if e.status != 409:  # a retried create whose first attempt got through is fine
                raise
        acked = time.monotonic()
        self.create_rtts.append(acked - sent)
        return acked

    async def _kubelet(self, name: str) -> None:
        async with self.kubelet_gate:
            await self.controllers.pods_become(self.namespace, name, PodState.READY)

    def _on_first(self, name: str, milestone: str) -> None:
        """Play the Deployment controller and kubelet for each new Deployment (emulator only)."""
        if milestone == "deployment" and self.plays_kubelet:
            self.kubelet_tasks.append(asyncio.create_task(self._kubelet(name)))

    async def execute(self) -> dict[str, Any]:
        await self.api.create(NAMESPACES, None, {"metadata": {"name": self.namespace}})
        await asyncio.to_thread(self.operator.start)
        assert self.operator.pid is not None
        sampler = Sampler(self.operator.pid)
        sampler.start()
        server = None if self.backend.pid is None else Sampler(self.backend.pid)
        if server is not None:
            server.start()
        await self.timeline.start()
        started = time.monotonic()
        try:
            return await self._measure(sampler, server, started)
        finally:
            await self.backend.cleanup(self.api, self.namespace)
            await sampler.stop()
            if server is not None:
                await server.stop()
            await self.timeline.stop()
            for task in self.kubelet_tasks:
                task.cancel()
            await asyncio.gather(*self.kubelet_tasks, return_exceptions=True)
            await asyncio.to_thread(self.operator.stop)
            await self.api.close()

    async def _measure(
        self, sampler: Sampler, server: Sampler | None, started: float
    ) -> dict[str, Any]:
        config = self.config
        # 1. The burst.
        names = [f"nim-{i:04d}" for i in range(config.count)]
        acked: dict[str, float] = {}
        gate = asyncio.Semaphore(config.concurrency)

        async def create(name: str) -> None:
            async with gate:
                acked[name] = await self.create(name)

        burst_start, _, burst_cpu0 = sampler.sample()
        server_cpu0 = server.sample()[2] if server is not None else 0.0
        await asyncio.gather(*(create(name) for name in names))
        applied = time.monotonic()
        if not await self.timeline.until(names, self.done, within=config.burst_timeout):
            missing = [
                n for n in names if any(self.timeline.reached(n, m) is None for m in self.done)
            ]
            raise TimeoutError(
                f"{len(missing)} of {config.count} NIMServices did not converge within "
                f"{config.burst_timeout:.0f}s (e.g. {missing[:3]}):\n{self.operator.log_tail()}"
            )
        converged = max(self.timeline.reached(n, m) or 0.0 for n in names for m in self.done)
        burst_end, _, burst_cpu1 = sampler.sample()
        server_cpu1 = server.sample()[2] if server is not None else 0.0
        burst_rtts = list(self.create_rtts)

        # 2. Settle: until the cluster stopped changing what the burst made.
        ledger = self.timeline.ledger
        _, settled = await self.timeline.settle(
            burst_end, quiet=config.settle, cap=config.settle_max
        )

        # 3. Idle: nothing but timers.
        window_start, rss0, cpu0 = sampler.sample()
        server_idle0 = server.sample()[2] if server is not None else 0.0
        await asyncio.sleep(config.window)
        window_end, rss1, cpu1 = sampler.sample()
        server_idle1 = server.sample()[2] if server is not None else 0.0
        window_rss = [rss for _, rss, _ in sampler.between(window_start, window_end)]

        # 4. Probes, one at a time.
        probe_acked: dict[str, float] = {}
        probe_start = time.monotonic()
        for index in range(config.probes):
            name = f"probe-{index:02d}"
            probe_acked[name] = await self.create(name)
            if not await self.timeline.until([name], self.done, within=60):
                raise TimeoutError(f"probe {name} did not converge:\n{self.operator.log_tail()}")
            await asyncio.sleep(0.2)
        probe_end = time.monotonic()
        peak_rss = max(rss for _, rss, _ in sampler.samples)

        # 5. Restart.
        await sampler.stop()
        await asyncio.to_thread(self.operator.stop)
        restart_start = time.monotonic()
        await asyncio.to_thread(self.operator.start)
        assert self.operator.pid is not None
        successor = Sampler(self.operator.pid)
        successor.start()
        try:
            await asyncio.sleep(config.window)
            restart_end, restart_rss, restart_cpu = successor.sample()
        finally:
            await successor.stop()
        restart: dict[str, Any] = {
            "window_s": _round(restart_end - restart_start, 1),
            "peak_rss_mib": _round(max(rss for _, rss, _ in successor.samples), 1),
            "rss_mib": _round(restart_rss, 1),
            # A new process: its CPU time is all spent in the window.
            "cpu_pct": _round(100 * restart_cpu / (restart_end - restart_start), 2),
            "changes": self.timeline.modified_between(restart_start, restart_end),
            "writes": summarize(ledger.between(restart_start, restart_end)),
        }
        # After the milestone that completed the burst: the tail of the cluster's own work.
        cut = converged + 1e-6
        tail = ledger.between(cut, window_start)
        by_others = [c.at for c in tail if c.by_others]
        settle: dict[str, Any] = {
            "quiet_s": config.settle,
            "max_s": config.settle_max,
            "settled": settled,
            "took_s": _round(window_start - converged, 2),
            # When the last change by someone else arrived, after convergence (0: none).
            "tail_s": _round(max(by_others) - converged if by_others else 0.0, 2),
            "writes": summarize(tail),
        }

        burst: dict[str, Any] = {
            "apply_s": _round(applied - burst_start),
            "converge_s": _round(converged - burst_start),
            "objects_per_s": _round(config.count / max(converged - burst_start, 1e-9), 1),
            "create_rtt_p50_ms": _round((percentile(burst_rtts, 0.5) or 0) * 1000, 2),
            "peak_rss_mib": _round(peak_rss, 1),
            # CPU seconds per NIMService until all converged: less sensitive than wall time to
            # what else the machine runs.
            "cpu_ms_per_object": _round(1000 * (burst_cpu1 - burst_cpu0) / config.count, 2),
            "server_cpu_pct": _round(
                100 * (server_cpu1 - server_cpu0) / (burst_end - burst_start), 1
            )
            if server is not None
            else None,
        }
        burst["writes"] = summarize(ledger.between(burst_start, cut))
        probe: dict[str, Any] = {}
        for milestone in self.done:
            burst.update(latencies(self.timeline, acked, milestone))
            probe.update(latencies(self.timeline, probe_acked, milestone))
        idle: dict[str, Any] = {
            "window_s": _round(window_end - window_start, 1),
            "rss_mib": _round(max([*window_rss, rss0, rss1]), 1),
            "cpu_pct": _round(100 * (cpu1 - cpu0) / (window_end - window_start), 2),
            "server_cpu_pct": _round(
                100 * (server_idle1 - server_idle0) / (window_end - window_start), 1
            )
            if server is not None
            else None,
            # Writes that changed something, as every watching client would see them.
            "changes": self.timeline.modified_between(window_start, window_end),
            "writes": summarize(ledger.between(window_start, window_end)),
        }
        idle["operator_writes"] = idle["writes"]["operator_writes"]
        phases = {
            "burst": (burst_start, cut),
            "settle": (cut, window_start),
            "idle": (window_start, window_end),
            "restart": (restart_start, restart_end),
            "run": (started, restart_end),
        }
        result: dict[str, Any] = {
            "operator": config.operator,
            "count": config.count,
            "namespace": self.namespace,
            "burst": burst,
            "settle": settle,
            "idle": idle,
            "probe": probe,
            "restart": restart,
            "requests": None,
            # Seconds since the operator started, for the plot.
            "phases": {
                "burst": [_round(burst_start - started, 2), _round(converged - started, 2)],
                "settle": [_round(burst_end - started, 2), _round(window_start - started, 2)],
                "idle": [_round(window_start - started, 2), _round(window_end - started, 2)],
                "probe": [_round(probe_start - started, 2), _round(probe_end - started, 2)],
                "restart": [
                    _round(restart_start - started, 2),
                    _round(restart_end - started, 2),
                ],
            },
            # Every latency, for the plot's distributions.
            "samples": {
                "burst": {m: _samples(self.timeline, acked, m) for m in self.done},
                "probe": {m: _samples(self.timeline, probe_acked, m) for m in self.done},
            },
        }
        served = await self.backend.requests(0)
        result["status_writes"] = {
            name: status_writes(
                ledger.between(start, end),
                None if served is None else [r for r in served[1] if start <= r.at < end],
            )
            for name, (start, end) in phases.items()
        }
        if served is not None:
            operator_requests = [r for r in served[1] if r.agent != BENCH_AGENT]

            def phase(start: float, end: float) -> list[Request]:
                return [r for r in operator_requests if start <= r.at < end]

            bench_creates = [
                r.took * 1000
                for r in served[1]
                if r.agent == BENCH_AGENT and r.action == "create" and r.took is not None
            ]
            restarted = [r for r in phase(restart_start, restart_end) if r.action != "watch"]
            if restarted:  # when the new process had taken over: its last request
                restart["resync_s"] = _round(max(r.at for r in restarted) - restart_start, 2)
            idle_stats = request_stats(phase(window_start, window_end))
            idle_stats["per_s"] = _round(idle_stats["requests"] / (window_end - window_start), 2)
            expected_ticks = round(config.count * (window_end - window_start) / config.interval)
            idle_stats["expected_ticks"] = expected_ticks
            # Per tick, not per reconcile: a tick that finds nothing changed applies nothing,
            # so ticks cannot be counted by their Deployment apply.
            for key, count in (
                ("per_tick", idle_stats["requests"]),
                ("writes_per_tick", idle_stats["writes"]),
            ):
                idle_stats[key] = _round(count / expected_ticks, 2) if expected_ticks else None
            result["requests"] = {
                "burst": request_stats(phase(burst_start, window_start), config.count),
                "idle": idle_stats,
                "restart": request_stats(
                    phase(restart_start, restart_end), config.count + config.probes
                ),
                # Reconciles in the idle window that applied the Deployment (every 10th run in a
                # row does); a tick that skips its applies is not among them.
                "idle_applying_reconciles": idle_stats["reconciles"],
                "emulator_create_p50_ms": _round(percentile(bench_creates, 0.5), 2),
            }
        return result


async def run(backend: Backend, config: RunConfig, workdir: Path) -> dict[str, Any]:
    """One run on a backend that is already started."""
    return await Run(backend, config, workdir).execute()
