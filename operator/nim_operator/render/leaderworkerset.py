"""LeaderWorkerSet `<name>` (leaderworkerset.x-k8s.io/v1): one server spread over a group of pods.

With `spec.multiNode`, each replica is a group of `parallelism.pipeline` pods, each with
`parallelism.tensor` GPUs: the leader runs the server (and is what the Service selects), the
workers only lend their GPUs to it. The LeaderWorkerSet controller (kubernetes-sigs/lws,
installed separately) creates the pods, gives each its group and worker index, and restarts the
whole group when one of its pods fails.

Both templates start from the Deployment's pod (nim_operator.render.deployment), so storage,
security, scheduling and credentials are the same; then:

* every pod gets the multi-node environment NVIDIA's operator gives NIM images: NIM_MULTI_NODE,
  the two parallel sizes, the node count and each pod's rank, and for the leader the start-up
  timeout and group size the image's launcher waits on; workers learn the leader's name.
  NIM_JSONL_LOGGING is 0 unless spec.env sets it (NIM's Ray workers cannot log JSON);
* NVIDIA NIM images (nvcr.io/nim/) take their role from that environment and keep their own
  entrypoint. Any other image is taken to be nim-serve on vLLM, whose multi-node engine runs on
  Ray: the leader starts a Ray head and then the server, each worker joins the head at the
  address the LeaderWorkerSet controller gives it (LWS_LEADER_ADDRESS) and stays until the
  group stops. A `spec.command` replaces both on the leader.
* with multiNode.ray the group is a Ray cluster whatever the image: an NVIDIA NIM image gets the
  arguments NVIDIA's operator gives it (`nim-serve-ray --head --port P` on the leader,
  `nim-serve-ray --head-address $(LWS_LEADER_ADDRESS):P` on workers); nim-serve's Ray head and
  workers use port P. Either way the leader declares the port (named `ray`) and workers get
  NVIDIA's startup probe, `ray status`, so a worker that cannot join restarts its group.
* workers have no ports or sidecars, and no probes but that one: there is no server in them.
* with multiNode.computeDomain, every pod claims the ComputeDomain's channel
  (nim_operator.render.compute_domain).
"""

from __future__ import annotations

import copy
from typing import Any

from nim_operator.models import DEFAULT_RAY_PORT, MultiNodeSpec, NIMServiceSpec
from nim_operator.render.common import Owner, object_meta
from nim_operator.render.compute_domain import add_channel_claim, created_channel_template
from nim_operator.render.deployment import CONTAINER_NAME, pod_spec
from nim_operator.render.labels import ROLE_LABEL, child_labels

__all__ = [
    "LWS_API_VERSION",
    "RAY_PORT",
    "render_leader_worker_set",
]

LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
# What the LeaderWorkerSet controller sets on every pod of a group.
_LWS = "leaderworkerset.sigs.k8s.io"
SIZE_ANNOTATION = f"{_LWS}/size"
LEADER_NAME_ANNOTATION = f"{_LWS}/leader-name"
GROUP_INDEX_LABEL = f"{_LWS}/group-index"
WORKER_INDEX_LABEL = f"{_LWS}/worker-index"
LWS_NAME_LABEL = f"{_LWS}/name"
# Ray's default head port (GCS), where workers join, unless multiNode.ray.rayPort says otherwise.
RAY_PORT = DEFAULT_RAY_PORT
RAY_PORT_NAME = "ray"
# NVIDIA NIM images' Ray launcher, as NVIDIA's operator calls it.
_NIM_RAY_LAUNCHER = "nim-serve-ray"


def _ray_head(port: int) -> str:
    return f"ray start --head --port={port} --disable-usage-stats"


def _ray_worker(port: int) -> str:
    return f'exec ray start --address="$LWS_LEADER_ADDRESS:{port}" --block --disable-usage-stats'


def _ray_worker_startup_probe(command: list[str]) -> dict[str, Any]:
    """NVIDIA's startup probe of a Ray worker: about a minute to see the cluster, or restart."""
    return {
        "exec": {"command": command},
        "initialDelaySeconds": 30,
        "timeoutSeconds": 5,
        "periodSeconds": 10,
        "failureThreshold": 3,
    }


def _value(name: str, value: str | int) -> dict[str, Any]:
    return {"name": name, "value": str(value)}


def _field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _group_env(multi_node: MultiNodeSpec) -> list[dict[str, Any]]:
    """What every pod of a group is told: it is one of several, and how the model is split."""
    return [
        _value("NIM_MULTI_NODE", 1),
        _value("NIM_TENSOR_PARALLEL_SIZE", multi_node.tensor_size()),
        _value("NIM_PIPELINE_PARALLEL_SIZE", multi_node.pipeline_size()),
        _value("NIM_NUM_COMPUTE_NODES", multi_node.pipeline_size()),
        _field("NIM_NODE_RANK", f"metadata.labels['{WORKER_INDEX_LABEL}']"),
        _value("NIM_MPI_ALLOW_RUN_AS_ROOT", 0),
    ]


def _leader_env(multi_node: MultiNodeSpec) -> list[dict[str, Any]]:
    return [
        *_group_env(multi_node),
        _value("NIM_LEADER_ROLE", 1),
        _value("OMPI_MCA_orte_keep_fqdn_hostnames", "true"),
        _value("OMPI_MCA_plm_rsh_args", "-o ConnectionAttempts=20"),
        _value("GPUS_PER_NODE", multi_node.tensor_size()),
        _value("CLUSTER_START_TIMEOUT", multi_node.start_timeout()),
        _field("CLUSTER_SIZE", f"metadata.annotations['{SIZE_ANNOTATION}']"),
        _field("GROUP_INDEX", f"metadata.labels['{GROUP_INDEX_LABEL}']"),
    ]


def _worker_env(multi_node: MultiNodeSpec) -> list[dict[str, Any]]:
    return [
        *_group_env(multi_node),
        _value("NIM_LEADER_ROLE", 0),
        _field("LEADER_NAME", f"metadata.annotations['{LEADER_NAME_ANNOTATION}']"),
        _field("NAMESPACE", "metadata.namespace"),
        _field("LWS_NAME", f"metadata.labels['{LWS_NAME_LABEL}']"),
    ]


def _with_env(container: dict[str, Any], extra: list[dict[str, Any]]) -> None:
    """Add `extra` after the container's env; a name already there (the user's) is kept."""
    env = container.setdefault("env", [])
    present = {entry["name"] for entry in env}
    env.extend(entry for entry in extra if entry["name"] not in present)


def _plain_logs(container: dict[str, Any], spec: NIMServiceSpec) -> None:
    """NIM_JSONL_LOGGING=0 unless the user's env sets it: NIM's multi-node Ray workers have no
    JSON log formatter, and NVIDIA's NIM documentation says to turn it off for multi-node."""
    if any(var.name == "NIM_JSONL_LOGGING" for var in spec.env or ()):
        return
    for entry in container.get("env") or []:
        if entry["name"] == "NIM_JSONL_LOGGING":
            entry["value"] = "0"


def _server(pod: dict[str, Any]) -> dict[str, Any]:
    (server,) = (c for c in pod["containers"] if c["name"] == CONTAINER_NAME)
    return dict(server)


def _channel_template(
    owner: Owner, multi_node: MultiNodeSpec, compute_domain_channel: str | None
) -> str | None:
    """The ComputeDomain channel's ResourceClaimTemplate the pods claim, or None."""
    domain = multi_node.compute_domain
    if domain is None:
        return None
    if domain.create:
        return created_channel_template(owner.name)
    if compute_domain_channel is None:
        # An existing ComputeDomain's template is read from it; rendering without it would
        # silently leave the pods outside the NVLink domain.
        raise ValueError("multiNode.computeDomain.name needs its channel's template name")
    return compute_domain_channel


def _leader_pod(owner: Owner, spec: NIMServiceSpec, multi_node: MultiNodeSpec) -> dict[str, Any]:
    pod = pod_spec(owner, spec)
    server = _server(pod)
    _with_env(server, _leader_env(multi_node))
    _plain_logs(server, spec)
    port = multi_node.ray_port()
    if spec.image.is_nvidia_nim():
        if multi_node.ray is not None and not spec.args:
            server["args"] = [_NIM_RAY_LAUNCHER, "--head", "--port", str(port)]
    elif not spec.command:
        # nim-serve's image entrypoint is the server; the Ray head must be up before it.
        head = _ray_head(port)
        server["command"] = ["/bin/sh", "-c", f'{head} && exec nim-serve "$@"', "nim-serve"]
    if multi_node.ray is not None:
        ray_port = {"name": RAY_PORT_NAME, "containerPort": port, "protocol": "TCP"}
        server["ports"] = [*server.get("ports", []), ray_port]
    pod["containers"] = [server if c["name"] == CONTAINER_NAME else c for c in pod["containers"]]
    return pod


def _worker_pod(owner: Owner, spec: NIMServiceSpec, multi_node: MultiNodeSpec) -> dict[str, Any]:
    pod = pod_spec(owner, spec)
    server = copy.deepcopy(_server(pod))
    for key in ("ports", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle"):
        server.pop(key, None)
    _with_env(server, _worker_env(multi_node))
    _plain_logs(server, spec)
    port = multi_node.ray_port()
    if not spec.image.is_nvidia_nim():
        # The server's arguments mean nothing to a Ray worker.
        server.pop("args", None)
        server["command"] = ["/bin/sh", "-c", _ray_worker(port)]
        if multi_node.ray is not None:
            status = f'ray status --address="$LWS_LEADER_ADDRESS:{port}"'
            server["startupProbe"] = _ray_worker_startup_probe(["/bin/sh", "-c", status])
    elif multi_node.ray is not None:
        # The image's entrypoint runs NVIDIA's Ray launcher; the leader's command is not theirs.
        server.pop("command", None)
        address = f"$(LWS_LEADER_ADDRESS):{port}"  # expanded by the kubelet from the pod's env
        server["args"] = [_NIM_RAY_LAUNCHER, "--head-address", address]
        server["startupProbe"] = _ray_worker_startup_probe(["/bin/sh", "-c", "ray status"])
    pod["containers"] = [server]
    return pod


def _template(owner: Owner, spec: NIMServiceSpec, role: str, pod: dict[str, Any]) -> dict[str, Any]:
    labels = dict(sorted({**child_labels(owner.name, spec), ROLE_LABEL: role}.items()))
    meta: dict[str, Any] = {"labels": labels}
    if spec.annotations:
        meta["annotations"] = dict(sorted(spec.annotations.items()))
    return {"metadata": meta, "spec": pod}


def render_leader_worker_set(
    owner: Owner,
    spec: NIMServiceSpec,
    *,
    replicas: int | None,
    compute_domain_channel: str | None = None,
) -> dict[str, Any] | None:
    """The LeaderWorkerSet `<name>` when spec.multiNode is set, else None (delete it).

    `compute_domain_channel` is the channel ResourceClaimTemplate of the existing ComputeDomain
    multiNode.computeDomain.name names (required then; a created one's is known).
    """
    multi_node = spec.multi_node
    if multi_node is None:
        return None
    leader = _leader_pod(owner, spec, multi_node)
    worker = _worker_pod(owner, spec, multi_node)
    channel = _channel_template(owner, multi_node, compute_domain_channel)
    if channel is not None:
        for pod in (leader, worker):
            add_channel_claim(pod, CONTAINER_NAME, channel)
    lws_spec: dict[str, Any] = {}
    if replicas is not None:
        lws_spec["replicas"] = replicas
    lws_spec.update(
        {
            # The leader's pod first: NIM's workers look for it by name as they start.
            "startupPolicy": "LeaderCreated",
            # As the Deployment: a new group comes up before an old one goes.
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {"maxSurge": 1, "maxUnavailable": 0},
            },
            # One headless Service for all groups: LWS_LEADER_ADDRESS resolves through it.
            "networkConfig": {"subdomainPolicy": "Shared"},
            "leaderWorkerTemplate": {
                "size": multi_node.pipeline_size(),
                # A group is one model: a pod lost is the whole group restarted.
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": _template(owner, spec, "leader", leader),
                "workerTemplate": _template(owner, spec, "worker", worker),
            },
        }
    )
    labels = child_labels(owner.name, spec)
    return {
        "apiVersion": LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": object_meta(owner, owner.name, labels, spec.annotations),
        "spec": lws_spec,
    }
