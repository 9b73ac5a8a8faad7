"""Cold start through the gateway's scale from zero, with a real replica.

The real `nim-gateway` watches a NIMService at zero replicas (`autoscaling.minReplicas: 0`) on
the API-server emulator (tests/support/kmock_cluster). A streamed request arrives; the gateway
holds it and sets the Deployment's /scale to 1. Kubernetes has no controllers or kubelet here,
so this module plays them, as tests/gateway/test_scale_from_zero.py does, except that the pod is
a real `nim-serve` process: when it sees the scale at 1 it starts one, polls its readiness every
0.1 s (a readiness probe), and publishes the ready EndpointSlice with its address, which the
gateway's discovery watch sees, releasing the request.

Timestamps (one monotonic clock) split the time from the request to its first token into the
gateway's part and the replica's part, so the cold start can be given without the gateway.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from bench.gateway.gateway_process import running_gateway
from bench.gateway.replicas import MODEL_ID, replica_env, wait_ready
from bench.gateway.run import probe_request, stream_chat
from bench.vllm_metrics import ttft_histogram
from tests.support.kmock_cluster import EmulatedCluster, project_crds
from tests.support.server_process import ServerProcess, start_server

__all__ = ["scale_from_zero"]

NAMESPACE = "bench"
NAME = "cold"
TOKEN = "bench-token"
# How often the stand-in controllers look at the Deployment's scale: its resolution.
POLL = 0.02


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    labels = {"app.kubernetes.io/instance": NAME}
    nimservice = {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": NAME},
        "spec": {
            "image": {"repository": "nimstack/nim-server", "tag": "0.1.0-cpu"},
            "model": {"servedName": MODEL_ID},
            "autoscaling": {"minReplicas": 0, "maxReplicas": 1},
        },
    }
    # The Deployment the operator renders, as far as /scale is concerned, at zero.
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "nim", "image": "nimstack/nim-server:0.1.0"}]},
            },
        },
    }
    return [
        (f"/apis/nimstack.dev/v1alpha1/namespaces/{NAMESPACE}/nimservices", nimservice),
        (f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", deployment),
    ]


def _ready_slice(port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{NAME}-pod", "labels": {"kubernetes.io/service-name": NAME}},
        "addressType": "IPv4",
        "ports": [{"name": "api", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
    }


def _engine_ttft(server: ServerProcess) -> float:
    """vLLM's own time to first token of the one request the replica has served (from its
    arrival at the replica)."""
    response = httpx.get(server.base_url + "/metrics", timeout=60)
    response.raise_for_status()
    seconds, count = ttft_histogram(response.text)
    if count != 1:
        raise RuntimeError(f"the replica served {count} requests, not 1")
    return seconds


async def _cold_request(gateway_url: str, max_tokens: int) -> tuple[float, float]:
    """When the request was sent and when its first token came."""
    async with httpx.AsyncClient(base_url=gateway_url, timeout=900) as client:
        sent = time.monotonic()
        sample = await stream_chat(client, probe_request(0, max_tokens))
        return sent, sent + sample.ttft


async def _play_the_cluster(
    kube: httpx.AsyncClient, model: Path, work: Path
) -> tuple[dict[str, float], ServerProcess]:
    """Wait for the gateway's scale-up, start the pod, publish it once ready."""
    scale = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}/scale"
    # Polled, as a controller's watch would notice it (the API server runs in another thread).
    while (await kube.get(scale)).json()["spec"].get("replicas", 0) < 1:  # noqa: ASYNC110
        await asyncio.sleep(POLL)
    times = {"scaled": time.monotonic()}
    server = start_server(work / "cold-start", replica_env(model, work / "cold-start" / "cache"))
    times["ready"] = await asyncio.to_thread(wait_ready, server, 0.1, 900)
    slices = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
    (await kube.post(slices, json=_ready_slice(server.port))).raise_for_status()
    times["published"] = time.monotonic()
    return times, server


def scale_from_zero(model: Path, work: Path, max_tokens: int) -> dict[str, float]:
    with EmulatedCluster(project_crds()) as cluster:
        kubeconfig = cluster.write_kubeconfig(work / "kubeconfig", token=TOKEN)
        env = {
            "KUBECONFIG": str(kubeconfig),
            "NIM_GATEWAY_NAMESPACES": NAMESPACE,
            # A model loads for tens of seconds on this CPU; the default (300 s) is kept.
        }

        async def run() -> tuple[dict[str, float], float]:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=cluster.url, headers=headers) as kube:
                namespace = {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": NAMESPACE},
                }
                (await kube.post("/api/v1/namespaces", json=namespace)).raise_for_status()
                for path, body in _manifests():
                    (await kube.post(path, json=body)).raise_for_status()
                with running_gateway(work / "gateway-kube", [], "least-load", env) as gateway:
                    request = asyncio.create_task(_cold_request(gateway.base_url, max_tokens))
                    times, server = await _play_the_cluster(kube, model, work)
                    try:
                        times["sent"], times["first_token"] = await request
                        engine_ttft = await asyncio.to_thread(_engine_ttft, server)
                    finally:
                        server.stop()
            return times, engine_ttft

        times, engine_ttft = asyncio.run(run())
    total = times["first_token"] - times["sent"]
    replica_start = times["ready"] - times["scaled"]
    return {
        "request_to_first_token_s": total,
        # The gateway's hold, read and /scale write (to within POLL).
        "request_to_scale_up_s": times["scaled"] - times["sent"],
        "pod_start_to_ready_s": replica_start,
        # Discovery seeing the slice, the release, forwarding, and the replica's first token.
        "slice_published_to_first_token_s": times["first_token"] - times["published"],
        "replica_first_token_s": engine_ttft,
        # The cold start without the gateway: the pod's start to ready, then its first token.
        "cold_start_without_gateway_s": replica_start + engine_ttft,
        "gateway_share_s": total - replica_start - engine_ttft,
    }
