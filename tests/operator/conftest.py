"""Fixtures for the operator's end-to-end tests, on kmock and (when KUBECONFIG is set) for real.

`backend` is parametrised: "kmock" serves tests/support's API-server emulator on a localhost
port; "k8s" (marked `k8s`, skipped unless KUBECONFIG is set) uses the cluster KUBECONFIG points
at. Either way crds/ is applied through the API and waited for (the emulator, like a real API
server, answers a new CRD's conditions as null until it is Established), the test code and the
real operator process talk HTTP to it through a kubeconfig, and every test gets a namespace of
its own. On kmock, a test whose clients (the operator above all) sent a request kube-apiserver
would refuse fails at teardown (kmock_strict, EmulatedCluster.assert_no_unexpected_rejections).
The cluster and operator are package-scoped: they stop when the operator tests end, so that an
idle operator and its emulator do not compete for the CPU with the tests that follow.

    pytest tests/operator                       # kmock only
    KUBECONFIG=~/.kube/config pytest -m k8s     # a real cluster (e.g. kind), see
                                                # docs/operator-runtime.md
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from nim_operator.kube import KubeClient, ResourceKind
from tests.support.fake_nim_pods import FakeReplicaSet
from tests.support.kmock_cluster import EmulatedCluster, project_crds, sent_invalid_on_purpose
from tests.support.kmock_harness import (
    ClusterDriver,
    EmulatedControllers,
    OperatorProcess,
    RealControllers,
    connection_from_kubeconfig,
    delete_namespace,
    install_crds,
)
from tests.support.nimservice_e2e import E2E

NAMESPACE_PREFIX = "nimtest-"
# The operator's timer, shortened from 60 s so "restored within the interval" is quick to see.
RECONCILE_INTERVAL = 2.0

NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)


def pytest_configure(config: pytest.Config) -> None:
    # kmock 0.8 loads its bundled resource list with a deprecated importlib call.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:kmock.*")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("KUBECONFIG"):
        return
    skip = pytest.mark.skip(reason="needs a cluster: set KUBECONFIG (docs/operator-runtime.md)")
    for item in items:
        if "k8s" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="package", params=["kmock", pytest.param("k8s", marks=pytest.mark.k8s)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="package")
def emulated(backend: str) -> Iterator[EmulatedCluster | None]:
    """The kmock backend's API server (None on a real cluster), without the project's CRDs."""
    if backend == "k8s":
        yield None
        return
    with EmulatedCluster(deliberate=sent_invalid_on_purpose) as cluster:
        yield cluster


@pytest.fixture(scope="package")
def kubeconfig(emulated: EmulatedCluster | None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if emulated is None:
        return Path(os.environ["KUBECONFIG"]).expanduser()
    return emulated.write_kubeconfig(tmp_path_factory.mktemp("kmock") / "kubeconfig")


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def api(kubeconfig: Path) -> AsyncIterator[KubeClient]:
    client = KubeClient(connection_from_kubeconfig(kubeconfig), user_agent="nimstack-e2e")
    yield client
    await client.close()


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def crds_installed(api: KubeClient) -> None:
    """Apply crds/ (server-side, as `kubectl apply --server-side`) and wait until Established."""
    await install_crds(api, project_crds(), field_manager="nimstack-e2e")


@pytest.fixture(scope="package")
def operator_process(
    kubeconfig: Path, crds_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The real operator, watching the test namespaces, with a 2 s timer."""
    process = OperatorProcess(
        kubeconfig,
        tmp_path_factory.mktemp("operator") / "operator.log",
        namespaces=f"{NAMESPACE_PREFIX}*",
        reconcile_interval=str(RECONCILE_INTERVAL),
        child_event_delay="0.2",
        capability_ttl="2",
        verbose="true",
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="package")
def driver(backend: str, api: KubeClient) -> ClusterDriver:
    return RealControllers() if backend == "k8s" else EmulatedControllers(api)


@pytest_asyncio.fixture(loop_scope="session")
async def namespace(
    api: KubeClient, operator_process: OperatorProcess, emulated: EmulatedCluster | None
) -> AsyncIterator[str]:
    """A namespace of the test's own; on kmock, the test fails if a request was refused."""
    refused_before = len(emulated.rejections()) if emulated is not None else 0
    name = f"{NAMESPACE_PREFIX}{secrets.token_hex(4)}"
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    await api.create(NAMESPACES, None, manifest)
    yield name
    await delete_namespace(api, name)
    if emulated is not None:
        emulated.assert_no_unexpected_rejections(since=refused_before)


@pytest.fixture
def e2e(
    api: KubeClient, namespace: str, driver: ClusterDriver, operator_process: OperatorProcess
) -> E2E:
    return E2E(api, namespace, driver, operator_process)


@pytest.fixture
async def pods(e2e: E2E) -> AsyncIterator[FakeReplicaSet]:
    """The pods of Deployment `llm`, with metrics endpoints; kmock only."""
    if not e2e.driver.emulated:
        pytest.skip("needs pods whose metrics endpoints the test serves (kmock)")
    async with FakeReplicaSet(e2e.api, e2e.namespace, "llm") as replica_set:
        yield replica_set


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    """An emulated API server of a test's own, for tests that run reconcile() in-process.

    Modules that share one across their tests override this with a module-scoped fixture.
    """
    with EmulatedCluster(project_crds()) as emulated:
        yield emulated
