"""Child events re-reconcile the owner at once, without waiting for the timer.

A second operator process runs with a 10-minute timer and watches its own namespaces, so
anything that happens here within seconds was caused by a Deployment or Pod event.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from nim_operator.kube import KubeClient, ResourceKind
from tests.support.kmock_harness import (
    ClusterDriver,
    OperatorProcess,
    PodState,
    delete_namespace,
    eventually,
)

NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
PREFIX = "nimevents-"


@pytest.fixture(scope="module")
def slow_timer_operator(
    kubeconfig: Path, crds_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        kubeconfig,
        tmp_path_factory.mktemp("slow-timer") / "operator.log",
        namespaces=f"{PREFIX}*",
        reconcile_interval="600",
        child_event_delay="0.2",
        verbose="true",
    )
    process.start()
    yield process
    process.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def events_namespace(
    api: KubeClient, slow_timer_operator: OperatorProcess
) -> AsyncIterator[str]:
    name = f"{PREFIX}{secrets.token_hex(4)}"
    await api.create(
        NAMESPACES, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    yield name
    await delete_namespace(api, name)


async def test_a_deleted_deployment_comes_back_at_once(
    api: KubeClient,
    events_namespace: str,
    driver: ClusterDriver,
    slow_timer_operator: OperatorProcess,
) -> None:
    ns = events_namespace
    body = {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": "llm"},
        "spec": {
            "image": {"repository": "registry.k8s.io/pause", "tag": "3.10"},
            "gpu": {"count": 0},
            "livenessProbe": {"enabled": False},
            "readinessProbe": {"enabled": False},
            "startupProbe": {"enabled": False},
        },
    }
    await api.create(NIMSERVICES, ns, body)

    async def deployment() -> dict[str, Any] | None:
        return await api.get(DEPLOYMENTS, ns, "llm")

    first = await eventually(deployment, within=driver.timeout, what="the Deployment")
    await api.delete(DEPLOYMENTS, ns, "llm")

    async def replaced() -> dict[str, Any] | None:
        dep = await api.get(DEPLOYMENTS, ns, "llm")
        return dep if dep and dep["metadata"]["uid"] != first["metadata"]["uid"] else None

    await eventually(
        replaced, within=10, what="the Deployment re-created", context=slow_timer_operator.log_tail
    )

    # A pod going into a crash loop shows up in the status without a timer tick.
    await driver.pods_become(ns, "llm", PodState.CRASH_LOOP)

    async def crash_reported() -> bool:
        nim = await api.get(NIMSERVICES, ns, "llm")
        conditions = {
            c["type"]: c for c in ((nim or {}).get("status") or {}).get("conditions") or []
        }
        return conditions.get("Degraded", {}).get("reason") == "CrashLoopBackOff"

    within = 10 if driver.emulated else driver.timeout
    await eventually(
        crash_reported, within=within, what="CrashLoopBackOff", context=slow_timer_operator.log_tail
    )
