"""What the operator end-to-end tests share between the kmock emulator and a real cluster.

* `connection_from_kubeconfig`: an API client for the test code, from a kubeconfig file.
* `OperatorProcess`: the real operator, `python -m nim_operator`, as a child process.
* `ClusterDriver`: the parts of Kubernetes that kmock is not. A real cluster has a controller
  manager, a scheduler and kubelets; on kmock, `EmulatedControllers` plays them *explicitly*, when
  a test says "the pods of this Deployment now look like X", writing the Pod and Deployment
  status bodies a real cluster produces in that situation. On a real cluster, `RealControllers`
  does nothing and the test just waits longer for the real thing to happen.
* `eventually`: poll until a condition holds, with the operator's log tail on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import kopf
import kubernetes.client
import kubernetes.config

from nim_operator.kube import ApiError, KubeClient, ResourceKind

T = TypeVar("T")

DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
PODS = ResourceKind("v1", "pods")
NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
CRDS = ResourceKind("apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False)


def connection_from_kubeconfig(path: Path) -> kopf.ConnectionInfo:
    """Credentials from a kubeconfig file, read the way kopf's `login_via_client` reads them."""
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(path), client_configuration=config)
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix(
        "authorization"
    )
    scheme, token = (None, None)
    if header:
        parts = header.split(" ", 1)
        scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


# What kopf logs (verbose) once its watch of namespaces has begun.
NAMESPACE_WATCH = "Starting the watch-stream for namespaces.v1 cluster-wide."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OperatorProcess:
    """`python -m nim_operator` against a kubeconfig, logging to a file.

    `argv` replaces the command (e.g. the manifest's `kopf run -m nim_operator.handlers ...`);
    `{liveness}` in it is replaced by the liveness URL the process must serve. `env` adds
    environment variables other than the NIM_OPERATOR_* `settings` (e.g. PYTHONPATH).
    """

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        *,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        **settings: str,
    ) -> None:
        self.log_path = log_path
        self.liveness = f"http://127.0.0.1:{_free_port()}/healthz"
        self._argv = [
            part.replace("{liveness}", self.liveness)
            for part in (argv or [sys.executable, "-m", "nim_operator"])
        ]
        self._env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "NIM_OPERATOR_LIVENESS_ENDPOINT": self.liveness,
            **(env or {}),
            **{f"NIM_OPERATOR_{key.upper()}": value for key, value in settings.items()},
        }
        # kopf (1.45) lists the namespaces, then lists them again to start watching them, and
        # ignores a namespace that appears between the two lists. A test creating its namespace
        # must wait until the watch began: start() does, where the log can tell (verbose) and
        # the process watches at once (not a standby of leader election).
        self._await_namespace_watch = (
            "*" in settings.get("namespaces", "")
            and settings.get("verbose") == "true"
            and settings.get("leader_election") != "true"
        )
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        logged_before = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._argv,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the operator exited at startup:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.liveness, timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise TimeoutError(f"the operator's liveness probe never answered:\n{self.log_tail()}")
        while self._await_namespace_watch and NAMESPACE_WATCH not in self._log_since(logged_before):
            if time.monotonic() >= deadline or self._process.poll() is not None:
                raise TimeoutError(f"the operator never watched namespaces:\n{self.log_tail()}")
            time.sleep(0.1)

    def _log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    @property
    def pid(self) -> int | None:
        """The operator's process id once started (for psutil), else None."""
        return None if self._process is None else self._process.pid

    def stop(self, timeout: float = 20.0) -> int | None:
        if self._process is None:
            return None
        self._process.send_signal(signal.SIGTERM)
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait()

    def kill(self) -> int:
        """SIGKILL: no cleanup, no finalizer or annotation written on the way out."""
        assert self._process is not None
        self._process.kill()
        return self._process.wait()

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 80) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    within: float,
    interval: float = 0.25,
    what: str = "condition",
    context: Callable[[], str] = lambda: "",
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` and `context()`."""
    deadline = asyncio.get_running_loop().time() + within
    last: T | None = None
    while True:
        last = await probe()
        if last:
            return last
        if asyncio.get_running_loop().time() >= deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}\n{context()}")
        await asyncio.sleep(interval)


async def install_crds(
    api: KubeClient,
    crds: Iterable[Mapping[str, Any]],
    *,
    field_manager: str,
    within: float = 60.0,
) -> None:
    """Apply CRDs (server-side, forced) and wait until the API server says each is Established.

    A new CRD's `status.conditions` is null (not absent, not empty) until the apiextensions
    controllers have run, on a real API server and on the emulator alike.
    """
    names = []
    for crd in crds:
        await api.apply(CRDS, crd, field_manager=field_manager)
        names.append(crd["metadata"]["name"])
    for name in names:

        async def established(name: str = name) -> bool:
            live = await api.get(CRDS, None, name)
            conditions = ((live or {}).get("status") or {}).get("conditions") or []
            return any(
                c.get("type") == "Established" and c.get("status") == "True" for c in conditions
            )

        await eventually(established, within=within, what=f"CRD {name} established")


async def delete_namespace(api: KubeClient, name: str) -> None:
    """Delete a test namespace, its NIMServices first.

    The NIMServices go while the operator still runs to release its finalizers: a namespace
    deleted after the operator stopped would hang in Terminating on a real cluster.
    """
    for nim in await api.list(NIMSERVICES, name):
        await api.delete(NIMSERVICES, name, nim["metadata"]["name"])

    async def released() -> bool:
        return not await api.list(NIMSERVICES, name)

    with contextlib.suppress(AssertionError):
        await eventually(released, within=30, what=f"NIMServices in {name} deleted")
    # Best effort: a real cluster finishes deleting the namespace in the background.
    with contextlib.suppress(ApiError):
        await api.delete(NAMESPACES, None, name)


class PodState(enum.Enum):
    READY = "ready"
    UNSCHEDULABLE_GPU = "unschedulable-gpu"
    CRASH_LOOP = "crash-loop"


class ClusterDriver(Protocol):
    """The cluster's own controllers, as far as a test depends on them."""

    # How long to wait for things a real cluster does by itself (pulls, schedules, restarts).
    timeout: float
    emulated: bool

    async def pods_become(self, namespace: str, deployment: str, state: PodState) -> None: ...


class RealControllers:
    """A real cluster runs its own controllers: nothing to do but wait."""

    timeout = 240.0
    emulated = False

    async def pods_become(self, namespace: str, deployment: str, state: PodState) -> None:
        return None


def _rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class EmulatedControllers:
    """kube-controller-manager, kube-scheduler and the kubelet, played on demand over the API.

    `pods_become` does what the Deployment/ReplicaSet controllers, the scheduler and the kubelet
    would do for a Deployment whose pods end up in `state`: it replaces the Deployment's Pods
    with ones built from its template, writes their status, then writes the Deployment's status.
    The status bodies are the ones a real cluster reports in each situation.
    """

    timeout = 15.0
    emulated = True

    def __init__(self, api: KubeClient) -> None:
        self._api = api

    async def pods_become(self, namespace: str, deployment: str, state: PodState) -> None:
        live = await self._api.get(DEPLOYMENTS, namespace, deployment)
        assert live is not None, f"Deployment {namespace}/{deployment} does not exist"
        spec = live["spec"]
        template = spec["template"]
        # Fields the API allows to be absent or null are read as such (a selector may have only
        # matchExpressions; the template's metadata is optional).
        labels = (template.get("metadata") or {}).get("labels") or {}
        match_labels = (spec.get("selector") or {}).get("matchLabels") or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
        for old in await self._api.list(PODS, namespace, label_selector=selector or None):
            await self._api.delete(PODS, namespace, old["metadata"]["name"])
        replicas = spec.get("replicas")
        desired = 1 if replicas is None else int(replicas)
        suffix = secrets.token_hex(4)[:8]
        for index in range(desired):
            name = f"{deployment}-{suffix}-{index}"
            await self._api.create(
                PODS,
                namespace,
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name, "labels": labels},
                    "spec": template.get("spec") or {},
                },
            )
            await self._api.merge_patch(
                PODS, namespace, name, {"status": _pod_status(name, state)}, subresource="status"
            )
        await self._api.merge_patch(
            DEPLOYMENTS,
            namespace,
            deployment,
            {"status": _deployment_status(live, desired, state)},
            subresource="status",
        )


def _pod_status(pod: str, state: PodState) -> dict[str, Any]:
    now = _rfc3339()
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}
    if state is PodState.UNSCHEDULABLE_GPU:
        return {
            "phase": "Pending",
            "qosClass": "BestEffort",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "lastTransitionTime": now,
                    "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. "
                    "preemption: 0/1 nodes are available: 1 No preemption victims found for "
                    "incoming pod.",
                }
            ],
        }
    if state is PodState.CRASH_LOOP:
        return {
            "phase": "Running",
            "hostIP": "172.18.0.2",
            "podIP": "10.244.0.17",
            "startTime": now,
            "conditions": [
                scheduled,
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {
                    "type": "ContainersReady",
                    "status": "False",
                    "reason": "ContainersNotReady",
                    "message": "containers with unready status: [nim]",
                    "lastTransitionTime": now,
                },
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "ContainersNotReady",
                    "message": "containers with unready status: [nim]",
                    "lastTransitionTime": now,
                },
            ],
            "containerStatuses": [
                {
                    "name": "nim",
                    "ready": False,
                    "started": False,
                    "restartCount": 3,
                    "image": "docker.io/library/busybox:1.36",
                    "imageID": "",
                    "state": {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": f"back-off 40s restarting failed container=nim pod={pod}",
                        }
                    },
                    "lastState": {
                        "terminated": {
                            "exitCode": 3,
                            "reason": "Error",
                            "startedAt": now,
                            "finishedAt": now,
                        }
                    },
                }
            ],
        }
    return {
        "phase": "Running",
        "hostIP": "172.18.0.2",
        "podIP": "10.244.0.16",
        "startTime": now,
        "conditions": [
            scheduled,
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
        ],
        "containerStatuses": [
            {
                "name": "nim",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "image": "registry.k8s.io/pause:3.10",
                "imageID": "",
                "state": {"running": {"startedAt": now}},
            }
        ],
    }


def _deployment_status(live: Mapping[str, Any], desired: int, state: PodState) -> dict[str, Any]:
    now = _rfc3339()
    rs = f"{live['metadata']['name']}-5d8f7c9b6"
    ready = desired if state is PodState.READY else 0
    conditions = [
        {
            "type": "Available",
            "status": "True" if ready else "False",
            "reason": "MinimumReplicasAvailable" if ready else "MinimumReplicasUnavailable",
            "message": "Deployment has minimum availability."
            if ready
            else "Deployment does not have minimum availability.",
            "lastUpdateTime": now,
            "lastTransitionTime": now,
        },
        {
            "type": "Progressing",
            "status": "True",
            "reason": "NewReplicaSetAvailable" if ready else "ReplicaSetUpdated",
            "message": f'ReplicaSet "{rs}" has successfully progressed.'
            if ready
            else f'ReplicaSet "{rs}" is progressing.',
            "lastUpdateTime": now,
            "lastTransitionTime": now,
        },
    ]
    status: dict[str, Any] = {
        "observedGeneration": live["metadata"]["generation"],
        "replicas": desired,
        "updatedReplicas": desired,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "conditions": conditions,
    }
    if desired - ready:
        status["unavailableReplicas"] = desired - ready
    return status
