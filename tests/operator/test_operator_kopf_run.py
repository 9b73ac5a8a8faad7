"""`kopf run -m nim_operator.handlers` works as the operator image runs it (in-process here).

The other end-to-end tests start `python -m nim_operator` as a child process; this one runs
kopf's own CLI in a thread with kopf.testing.KopfRunner against the emulator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kubernetes.config.kube_config
import pytest
import pytest_asyncio
from kopf.testing import KopfRunner

from nim_operator.kube import KubeClient, ResourceKind
from tests.support.kmock_cluster import EmulatedCluster, project_crds
from tests.support.kmock_harness import connection_from_kubeconfig, eventually

NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
NS = "nimkopf-run"


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with EmulatedCluster(project_crds()) as cluster:
        path = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        monkeypatch.setenv("KUBECONFIG", str(path))
        # The official client reads $KUBECONFIG once, at import; kopf logs in through it.
        monkeypatch.setattr(
            kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path)
        )
        yield path


@pytest_asyncio.fixture(loop_scope="session")
async def kube(kubeconfig: Path) -> AsyncIterator[KubeClient]:
    client = KubeClient(connection_from_kubeconfig(kubeconfig))
    yield client
    await client.close()


async def test_kopf_run_reconciles_a_nimservice(kube: KubeClient) -> None:
    await kube.create(NAMESPACES, None, {"metadata": {"name": NS}})
    spec = {"image": {"repository": "registry.k8s.io/pause", "tag": "3.10"}, "gpu": {"count": 0}}
    args = ["run", "-m", "nim_operator.handlers", "--standalone", "--namespace", "nimkopf-*"]
    with KopfRunner(args, timeout=30) as runner:
        await kube.create(
            NIMSERVICES,
            NS,
            {
                "apiVersion": "nimstack.dev/v1alpha1",
                "kind": "NIMService",
                "metadata": {"name": "llm"},
                "spec": spec,
            },
        )

        async def reconciled() -> dict[str, Any] | None:
            nim = await kube.get(NIMSERVICES, NS, "llm")
            observed = ((nim or {}).get("status") or {}).get("observedGeneration") == 1
            # kopf records its state after the handler returns, so after the status is written.
            recorded = (nim or {}).get("metadata", {}).get("annotations")
            done = observed and recorded and await kube.get(DEPLOYMENTS, NS, "llm")
            return nim if done else None

        nim = await eventually(reconciled, within=20, what="the NIMService reconciled")
    assert runner.exit_code == 0
    assert runner.exception is None
    assert nim["metadata"]["finalizers"] == ["nimstack.dev/finalizer"]
    annotations = nim["metadata"]["annotations"]
    assert any(key.startswith("nimstack.dev/") for key in annotations)  # kopf's state, our prefix
    assert not any(key.startswith("kopf.zalando.org/") for key in annotations)
