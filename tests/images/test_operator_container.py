"""The operator image's own entrypoint, in a container, reconciles a NIMService.

The API server is the strict emulator on the host's loopback (there is no cluster here); the
container shares the host's network only to reach it, and runs as the manifest's Deployment
would: its image user, a read-only root filesystem, no capabilities, no privilege escalation.
The image's ENTRYPOINT runs unchanged; only CMD's liveness address moves off port 8080.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml

from nim_operator.kube import KubeClient, ResourceKind
from tests.support.kmock_cluster import EmulatedCluster, project_crds
from tests.support.kmock_harness import connection_from_kubeconfig, eventually
from tests.support.podman import OPERATOR_IMAGE, SERVER_IMAGE, podman
from tests.support.server_process import free_port

# The first test to run builds both images (about 10 minutes from scratch on 2 cores).
pytestmark = [pytest.mark.images, pytest.mark.usefixtures("images"), pytest.mark.timeout(1800)]

NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "smollm2-cpu.yaml"
CONTAINER = "nimstack-operator-image-test"
NAMESPACE = "models"


@pytest_asyncio.fixture(loop_scope="session")
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[KubeClient, Path]]:
    with EmulatedCluster(project_crds()) as emulated:
        kubeconfig = emulated.write_kubeconfig(tmp_path / "kubeconfig")
        kubeconfig.chmod(0o644)  # readable by the image's user, 65532
        api = KubeClient(connection_from_kubeconfig(kubeconfig), user_agent="nimstack-images")
        try:
            yield api, kubeconfig
        finally:
            await api.close()


async def test_entrypoint_reconciles_the_sample(cluster: tuple[KubeClient, Path]) -> None:
    api, kubeconfig = cluster
    liveness = free_port()
    podman("rm", "--force", "--ignore", CONTAINER)
    podman(
        "run",
        "--detach",
        "--name",
        CONTAINER,
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--volume",
        f"{kubeconfig}:/etc/nimstack/kubeconfig:ro",
        "--env",
        "KUBECONFIG=/etc/nimstack/kubeconfig",
        OPERATOR_IMAGE,
        "--all-namespaces",
        "--standalone",
        f"--liveness=http://127.0.0.1:{liveness}/healthz",
    )

    def logs() -> str:
        result = podman("logs", CONTAINER, check=False)
        return (result.stdout + result.stderr)[-6000:]

    try:
        await api.create(NAMESPACES, None, {"metadata": {"name": NAMESPACE}})
        sample = yaml.safe_load(SAMPLE.read_text())
        await api.create(NIMSERVICES, NAMESPACE, sample)

        async def reconciled() -> tuple[dict[str, Any], dict[str, Any]] | None:
            nim = await api.get(NIMSERVICES, NAMESPACE, "smollm2") or {}
            observed = (nim.get("status") or {}).get("observedGeneration") == 1
            deployment = await api.get(DEPLOYMENTS, NAMESPACE, "smollm2")
            return (nim, deployment) if observed and deployment else None

        nim, deployment = await eventually(
            reconciled, within=60, what="the sample reconciled", context=logs
        )
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == SERVER_IMAGE
        conditions = {c["type"]: c for c in nim["status"].get("conditions") or []}
        assert conditions, nim["status"]
        async with httpx.AsyncClient() as client:
            health = await client.get(f"http://127.0.0.1:{liveness}/healthz", timeout=5)
        assert health.status_code == 200, logs()
    finally:
        podman("stop", "--time", "20", CONTAINER, check=False)
    state = json.loads(podman("inspect", CONTAINER).stdout)[0]["State"]
    output = logs()
    podman("rm", "--force", CONTAINER, check=False)
    assert state["ExitCode"] == 0, output
    assert "Traceback" not in output, output
