"""The pod the operator renders for the CPU sample, run from the built image with podman.

The Deployment comes from the operator's own renderer applied to manifests/samples/smollm2-cpu.yaml
and runs under `podman kube play`, which enforces its securityContext (UID/GID, dropped
capabilities, no privilege escalation, seccomp, read-only root filesystem). The test's copy of
the manifest differs from what a cluster gets in two places only, both where podman is not a
kubelet (the edge this machine cannot cross: there is no cluster):
- the API port is published on 127.0.0.1 (hostPort/hostIP), since podman 4.3's kube play has no
  --publish and there is no Service;
- each emptyDir is a fresh world-writable host directory, which is what kubelet makes of one;
  podman 4.3 mounts a `medium: Memory` emptyDir as a root-owned 0755 directory on disk, which
  UID 1000 cannot write (vLLM's shared-memory ring buffer then fails at load).
podman ignores readiness probes and runs liveness only through systemd, so the test polls the
probes' paths itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_deployment
from tests.support.podman import PlayedDeployment, play, podman, published_on_loopback
from tests.support.server_process import free_port

# The first test to run builds both images (about 10 minutes from scratch on 2 cores).
pytestmark = [pytest.mark.images, pytest.mark.usefixtures("images"), pytest.mark.timeout(1800)]

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "smollm2-cpu.yaml"
LOAD_TIMEOUT = 600


@dataclass
class ServedPod:
    played: PlayedDeployment
    base_url: str
    deployment: dict[str, Any]
    live_while_loading: bool


def rendered_deployment() -> dict[str, Any]:
    """The sample's Deployment exactly as the operator renders it."""
    sample = yaml.safe_load(SAMPLE.read_text())
    spec = NIMServiceSpec.from_body(sample["spec"])
    owner = Owner(sample["metadata"]["name"], "default", "00000000-0000-4000-8000-000000000001")
    return render_deployment(owner, spec, replicas=spec.desired_replicas())


def emptydirs_as_kubelet_makes_them(deployment: dict[str, Any], root: Path) -> None:
    """Each emptyDir -> a fresh 0777 (sticky) host directory: see the module docstring."""
    for volume in deployment["spec"]["template"]["spec"]["volumes"]:
        if "emptyDir" in volume:
            directory = root / volume["name"]
            directory.mkdir()
            directory.chmod(0o1777)
            del volume["emptyDir"]
            volume["hostPath"] = {"path": str(directory), "type": "Directory"}


def status(client: httpx.Client, path: str) -> int | None:
    try:
        return client.get(path, timeout=5).status_code
    except httpx.TransportError:
        return None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedPod]:
    root = tmp_path_factory.mktemp("pod")
    deployment = rendered_deployment()
    port = free_port()
    published_on_loopback(deployment, [port])
    volumes = root / "volumes"
    volumes.mkdir()
    emptydirs_as_kubelet_makes_them(deployment, volumes)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    name = f"{deployment['metadata']['name']}-pod-0-{container['name']}"
    played = play(deployment, root, container=name)
    base_url = f"http://127.0.0.1:{port}"
    try:
        live_while_loading = False
        deadline = time.monotonic() + LOAD_TIMEOUT
        with httpx.Client(base_url=base_url) as client:
            while (ready := status(client, "/v1/health/ready")) != 200:
                if ready == 503 and status(client, "/v1/health/live") == 200:
                    live_while_loading = True
                if time.monotonic() > deadline:
                    pytest.fail(f"not ready within {LOAD_TIMEOUT} s:\n{played.logs()}")
                time.sleep(1)
        yield ServedPod(played, base_url, deployment, live_while_loading)
    finally:
        played.down()


def test_live_while_loading_then_ready(served: ServedPod) -> None:
    assert served.live_while_loading, served.played.logs()
    response = httpx.get(f"{served.base_url}/v1/health/live")
    assert response.status_code == 200
    assert response.json()["status"] == "alive"


def test_chat_completion_from_an_openai_client(served: ServedPod) -> None:
    client = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="unused", max_retries=0)
    (model,) = client.models.list().data
    assert model.id == "smollm2"
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0


def test_runs_restricted_as_the_rendered_pod_says(served: ServedPod) -> None:
    pod_security = served.deployment["spec"]["template"]["spec"]["securityContext"]
    fields = served.played.status_of_pid1()
    assert fields["Uid"].split() == [str(pod_security["runAsUser"])] * 4
    assert fields["Gid"].split() == [str(pod_security["runAsGroup"])] * 4
    for capabilities in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[capabilities], 16) == 0, capabilities
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"  # a filter: RuntimeDefault


def test_writes_only_where_the_manifest_mounts_volumes(served: ServedPod) -> None:
    (container,) = served.deployment["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {item["name"]: item.get("value") for item in container["env"]}
    cache = env["NIM_CACHE_PATH"]
    # The server put the converted default model into the cache path, as the pod's user.
    listing = served.played.exec("ls", f"{cache}/converted").stdout.split()
    assert any(entry.startswith("SmolLM2") for entry in listing), listing
    served.played.exec("touch", f"{cache}/.writable", "/tmp/.writable", "/dev/shm/.writable")
    refused = served.played.exec("touch", "/opt/.writable", check=False)
    assert refused.returncode != 0
    assert "Read-only file system" in refused.stderr


def test_sigterm_drains_the_stream_in_flight(served: ServedPod) -> None:
    """Stop as kubelet does (SIGTERM, then the grace period): the open stream still completes."""
    chunks: list[str] = []
    opened = threading.Event()

    def stream() -> None:
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 200,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.stream(
            "POST", f"{served.base_url}/v1/chat/completions", json=body, timeout=120
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    chunks.append(line.removeprefix("data: "))
                    opened.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert opened.wait(60), served.played.logs()
    grace = served.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    stopping = threading.Thread(
        target=podman, args=("stop", "--time", str(grace), served.played.container)
    )
    stopping.start()
    seen_draining = False
    with httpx.Client(base_url=served.base_url) as client:
        while stopping.is_alive() and not seen_draining:
            seen_draining = status(client, "/v1/health/ready") == 503
    reader.join(120)
    stopping.join(120)
    assert seen_draining, "readiness never said 503 while draining"
    assert chunks[-1] == "[DONE]"
    tokens = sum(
        1 for chunk in chunks[:-1] if json.loads(chunk)["choices"][0]["delta"].get("content")
    )
    assert tokens > 100  # the stream ran to its end after SIGTERM, not cut at the signal
    state = json.loads(podman("inspect", served.played.container).stdout)[0]["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 0), served.played.logs()
    assert "draining 1 in-flight" in served.played.logs()
