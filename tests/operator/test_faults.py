"""API faults: failed, conflicting and slow requests are retried with backoff; dropped watches
are re-established; none of it marks the user's NIMService Failed.

The real operator (`python -m nim_operator`) runs against an emulator of its own, and faults are
injected with kmock reactions, each scoped to the test's namespace and to a number of requests
(`emulator["patch", deployments, namespace][:3] << 503`: the next three such requests fail, and
are not stored, as with a real failed request). The operator's timer is set to 60 s, so anything
that converges within a test's few seconds did so through the retry under test, not the timer.
The emulator records when each request arrived, which is how the backoff is measured.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import pytest_asyncio

from nim_operator.kube import KubeClient, ResourceKind
from tests.operator.test_operator_e2e import condition, cpu_spec
from tests.support.kmock_apiserver import FaultEffect
from tests.support.kmock_cluster import EmulatedCluster, project_crds
from tests.support.kmock_harness import (
    OperatorProcess,
    connection_from_kubeconfig,
    delete_namespace,
    eventually,
)

PREFIX = "faults-"
NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
NIMSERVICES_RESOURCE = kmock.resource("nimstack.dev", "v1alpha1", "nimservices")
DEPLOYMENTS_RESOURCE = kmock.resource("apps", "v1", "deployments")
# The operator's API helper: 3 retries, exponential backoff from 0.25 s with jitter in [0.5, 1].
API_RETRIES = 3
FIRST_BACKOFF = 0.25
API_TIMEOUT = 5.0  # kopf waits twice as long for its own requests; generous for a loaded CI box
# kopf's TemporaryError delay after the helper gave up (nim_operator.handlers.API_RETRY_DELAY).
KOPF_RETRY_DELAY = 10.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster(project_crds()) as emulated:
        yield emulated


@pytest.fixture(scope="module")
def operator(
    cluster: EmulatedCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    work = tmp_path_factory.mktemp("faults")
    process = OperatorProcess(
        cluster.write_kubeconfig(work / "kubeconfig"),
        work / "operator.log",
        namespaces=f"{PREFIX}*",
        reconcile_interval="60",
        child_event_delay="0.2",
        api_timeout=str(API_TIMEOUT),
        api_retries=str(API_RETRIES),
        verbose="true",
    )
    process.start()
    yield process
    process.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def kube(cluster: EmulatedCluster, tmp_path: Path) -> AsyncIterator[KubeClient]:
    info = connection_from_kubeconfig(cluster.write_kubeconfig(tmp_path / "kubeconfig"))
    client = KubeClient(info, user_agent="faults-test")
    yield client
    await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def namespace(kube: KubeClient, operator: OperatorProcess) -> AsyncIterator[str]:
    name = f"{PREFIX}{secrets.token_hex(4)}"
    await kube.create(NAMESPACES, None, {"metadata": {"name": name}})
    yield name
    await delete_namespace(kube, name)


def status(code: int, reason: str, message: str) -> kmock.Response:
    """A failed response as the API server writes it (a metav1.Status body)."""
    body = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code}
    return kmock.Response(status=code, payload={**body, "reason": reason, "message": message})


FAILURES = {
    500: status(500, "InternalError", "Internal error occurred: etcdserver: request timed out"),
    503: status(503, "ServiceUnavailable", "the server is currently unable to handle the request"),
    504: status(504, "Timeout", "the server was unable to return a response in the time allotted"),
}


def inject(
    cluster: EmulatedCluster,
    times: int,
    matches: Callable[[kmock.Request], bool],
    effect: kmock.Response | FaultEffect,
) -> None:
    cluster.inspect(lambda emulator: emulator.add_fault(times, matches, effect))


def request_times(cluster: EmulatedCluster, test: Callable[[kmock.Request], bool]) -> list[float]:
    """When each request matching `test` arrived at the emulator, in order."""
    return cluster.inspect(
        lambda emulator: [emulator.arrival_times[r.id] for r in emulator if test(r)]
    )


def requests_of(
    method: kmock.method, resource: kmock.resource, namespace: str, subresource: str | None = None
) -> Callable[[kmock.Request], bool]:
    def test(request: kmock.Request) -> bool:
        return (
            request.method == method
            and request.resource == resource
            and request.namespace == namespace
            and request.subresource == subresource
        )

    return test


def patches_of(
    resource: kmock.resource, namespace: str, subresource: str | None = None
) -> Callable[[kmock.Request], bool]:
    return requests_of(kmock.method.PATCH, resource, namespace, subresource)


async def create(kube: KubeClient, namespace: str, name: str) -> None:
    body = {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": name},
        "spec": cpu_spec(),
    }
    await kube.create(NIMSERVICES, namespace, body)


async def converged(
    kube: KubeClient, operator: OperatorProcess, namespace: str, name: str, *, within: float
) -> list[dict[str, Any]]:
    """Wait until the Deployment exists and the status is written; every status seen meanwhile."""
    seen: list[dict[str, Any]] = []

    async def done() -> bool:
        nim = await kube.get(NIMSERVICES, namespace, name)
        seen.append(dict((nim or {}).get("status") or {}))
        observed = ((nim or {}).get("status") or {}).get("observedGeneration") == 1
        return observed and await kube.get(DEPLOYMENTS, namespace, name) is not None

    await eventually(done, within=within, what=f"{name} converged", context=operator.log_tail)
    return seen


def never_failed(statuses: list[dict[str, Any]]) -> bool:
    """An API outage is not the user's mistake: the NIMService must not say Failed."""
    return all(
        status.get("state") != "Failed"
        and condition({"status": status}, "Failed").get("status") != "True"
        for status in statuses
    )


@pytest.mark.parametrize("code", sorted(FAILURES))
async def test_server_errors_are_retried_with_exponential_backoff(
    cluster: EmulatedCluster, operator: OperatorProcess, kube: KubeClient, namespace: str, code: int
) -> None:
    inject(cluster, API_RETRIES, patches_of(DEPLOYMENTS_RESOURCE, namespace), FAILURES[code])
    await create(kube, namespace, "llm")
    seen = await converged(kube, operator, namespace, "llm", within=20)

    attempts = request_times(cluster, patches_of(DEPLOYMENTS_RESOURCE, namespace))
    assert len(attempts) >= API_RETRIES + 1
    gaps = [b - a for a, b in itertools.pairwise(attempts[: API_RETRIES + 1])]
    # Each wait is at least half the exponential step (the jitter is [0.5, 1] of it).
    for attempt, gap in enumerate(gaps):
        assert gap >= 0.5 * FIRST_BACKOFF * 2**attempt * 0.95, gaps
    assert never_failed(seen)


async def test_too_many_requests_waits_as_long_as_the_server_asks(
    cluster: EmulatedCluster, operator: OperatorProcess, kube: KubeClient, namespace: str
) -> None:
    throttled = kmock.Response(
        status=429,
        headers={"Retry-After": "1"},
        payload={"kind": "Status", "code": 429, "reason": "TooManyRequests", "message": "slow"},
    )
    inject(cluster, 2, patches_of(DEPLOYMENTS_RESOURCE, namespace), throttled)
    await create(kube, namespace, "llm")
    await converged(kube, operator, namespace, "llm", within=20)
    attempts = request_times(cluster, patches_of(DEPLOYMENTS_RESOURCE, namespace))
    assert [round(b - a, 1) >= 1.0 for a, b in itertools.pairwise(attempts[:3])] == [True, True]


async def test_conflicts_on_apply_and_on_the_status_are_retried(
    cluster: EmulatedCluster, operator: OperatorProcess, kube: KubeClient, namespace: str
) -> None:
    conflict = status(
        409, "Conflict", "Operation cannot be fulfilled: the object has been modified"
    )
    inject(cluster, 2, patches_of(DEPLOYMENTS_RESOURCE, namespace), conflict)
    inject(cluster, 2, patches_of(NIMSERVICES_RESOURCE, namespace, "status"), conflict)
    await create(kube, namespace, "llm")
    seen = await converged(kube, operator, namespace, "llm", within=20)
    assert len(request_times(cluster, patches_of(DEPLOYMENTS_RESOURCE, namespace))) >= 3
    writes = request_times(cluster, patches_of(NIMSERVICES_RESOURCE, namespace, "status"))
    assert len(writes) >= 3
    assert never_failed(seen)


async def test_a_request_that_times_out_is_retried(
    cluster: EmulatedCluster, operator: OperatorProcess, kube: KubeClient, namespace: str
) -> None:
    async def hang(request: kmock.Request) -> None:
        # Longer than the operator waits; the request then goes through, late, as a slow API
        # server's would (server-side apply makes the retry and the late write agree).
        await asyncio.sleep(3 * API_TIMEOUT)

    inject(cluster, 1, patches_of(DEPLOYMENTS_RESOURCE, namespace), hang)
    await create(kube, namespace, "llm")
    seen = await converged(kube, operator, namespace, "llm", within=20)
    first, second = request_times(cluster, patches_of(DEPLOYMENTS_RESOURCE, namespace))[:2]
    assert second - first >= API_TIMEOUT  # the operator gave up on the first, then retried
    assert second - first < 3 * API_TIMEOUT  # ... without waiting for the hung answer
    assert never_failed(seen)


async def test_kopf_retries_its_own_failed_writes(
    cluster: EmulatedCluster, operator: OperatorProcess, kube: KubeClient, namespace: str
) -> None:
    """kopf's first write is the finalizer; kopf retries 5xx itself (networking.error_backoffs)."""
    inject(cluster, 2, patches_of(NIMSERVICES_RESOURCE, namespace), FAILURES[503])
    await create(kube, namespace, "llm")
    await converged(kube, operator, namespace, "llm", within=30)
    nim = await kube.get(NIMSERVICES, namespace, "llm")
    assert nim is not None
    assert nim["metadata"]["finalizers"] == ["nimstack.dev/finalizer"]


async def test_when_retries_run_out_kopf_tries_again_later(
    cluster: EmulatedCluster, operator: OperatorProcess, kube: KubeClient, namespace: str
) -> None:
    """Bounded retries, then a TemporaryError: the handler runs again after its delay."""
    failing = patches_of(DEPLOYMENTS_RESOURCE, namespace)
    inject(cluster, API_RETRIES + 1, failing, FAILURES[503])
    await create(kube, namespace, "llm")
    seen = await converged(kube, operator, namespace, "llm", within=KOPF_RETRY_DELAY + 20)
    attempts = request_times(cluster, patches_of(DEPLOYMENTS_RESOURCE, namespace))
    given_up, retried = attempts[API_RETRIES], attempts[API_RETRIES + 1]
    assert retried - given_up >= KOPF_RETRY_DELAY * 0.9
    assert never_failed(seen)
    assert operator.alive()


@pytest.mark.parametrize("abort", [True, False], ids=["connection-reset", "stream-ended"])
async def test_a_dropped_watch_is_watched_again(
    cluster: EmulatedCluster,
    operator: OperatorProcess,
    kube: KubeClient,
    namespace: str,
    abort: bool,
) -> None:
    await create(kube, namespace, "before")
    await converged(kube, operator, namespace, "before", within=20)

    def watches(request: kmock.Request) -> bool:
        return request.resource == NIMSERVICES_RESOURCE and request.params.get("watch") == "true"

    watched = len(request_times(cluster, watches))
    cluster.inspect(lambda emulator: emulator.drop_watches(abort=abort))
    # Only a watch can bring this one to the operator's notice within the test (timer: 60 s).
    await create(kube, namespace, "after")
    await converged(kube, operator, namespace, "after", within=30)
    assert len(request_times(cluster, watches)) > watched
    assert operator.alive()


async def test_a_dropped_watch_is_watched_again_through_errors(
    cluster: EmulatedCluster, operator: OperatorProcess, kube: KubeClient, namespace: str
) -> None:
    await create(kube, namespace, "before")
    await converged(kube, operator, namespace, "before", within=20)
    # The API server is briefly unavailable: the re-list and re-watch fail a few times.
    reads = requests_of(kmock.method.GET, NIMSERVICES_RESOURCE, namespace)
    lists_and_watches = 3
    inject(cluster, lists_and_watches, lambda r: reads(r) and r.name is None, FAILURES[503])
    cluster.inspect(lambda emulator: emulator.drop_watches(abort=True))
    await create(kube, namespace, "after")
    await converged(kube, operator, namespace, "after", within=30)
    failed_reads = request_times(cluster, lambda r: reads(r) and r.name is None)
    assert len(failed_reads) > lists_and_watches  # the faults were hit, and then got through
    assert operator.alive()


async def test_kopf_retries_a_write_that_lost_a_race(
    cluster: EmulatedCluster, operator: OperatorProcess, kube: KubeClient, namespace: str
) -> None:
    """A 409 means someone else wrote first. kopf does not resend its write blindly; it handles
    the newer version the watch brings, so the conflict here comes with that concurrent write."""
    conflict = status(
        409, "Conflict", "Operation cannot be fulfilled: the object has been modified"
    )

    async def lose_the_race(request: kmock.Request) -> kmock.Response:
        touch = {"metadata": {"annotations": {"example.com/touched-by": "another-controller"}}}
        headers = {"Content-Type": "application/merge-patch+json"}
        async with aiohttp.ClientSession() as session:
            url = f"{cluster.url}{request.url.path}"
            async with session.patch(url, json=touch, headers=headers) as response:
                assert response.status == 200
        return conflict

    inject(cluster, 1, patches_of(NIMSERVICES_RESOURCE, namespace), lose_the_race)
    await create(kube, namespace, "llm")
    await converged(kube, operator, namespace, "llm", within=20)
    nim = await kube.get(NIMSERVICES, namespace, "llm")
    assert nim is not None
    assert nim["metadata"]["finalizers"] == ["nimstack.dev/finalizer"]
    assert nim["metadata"]["annotations"]["example.com/touched-by"] == "another-controller"
    # kopf's lost write, the other writer's, and kopf's write again (at least).
    assert len(request_times(cluster, patches_of(NIMSERVICES_RESOURCE, namespace))) >= 3
