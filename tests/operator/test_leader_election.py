"""Leader election (nim_operator.leadership): two replicas, one reconciling, a quick take-over.

Three layers: the decisions as pure functions of a Lease body and a time; the elector against
the emulator's Lease (its optimistic concurrency decides races); and the acceptance test, two
real operator processes sharing one emulated cluster, each with its own bearer token so that
the emulator's request log tells who did what.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import pytest_asyncio

from nim_operator.kube import ApiError, KubeClient, ResourceKind
from nim_operator.leadership import (
    LEASES,
    LeaderElector,
    can_acquire,
    default_identity,
    format_micro_time,
    held_lease,
    holder_of,
    is_expired,
    lease_record,
    released_lease,
)
from nim_operator.settings import Settings, pod_namespace
from tests.operator.test_operator_e2e import cpu_spec
from tests.support.kmock_cluster import EmulatedCluster, project_crds
from tests.support.kmock_harness import OperatorProcess, connection_from_kubeconfig, eventually

NOW = datetime.datetime(2026, 12, 4, 10, 0, 0, tzinfo=datetime.UTC)
LEASE_NAMESPACE = "nim-ha-system"
NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
SERVICES = ResourceKind("v1", "services")
LEASE_RESOURCE = kmock.resource("coordination.k8s.io", "v1", "leases")


def lease(
    holder: str | None, *, renewed: datetime.datetime = NOW, duration: int = 15
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "leaseDurationSeconds": duration,
        "acquireTime": format_micro_time(renewed - datetime.timedelta(minutes=5)),
        "renewTime": format_micro_time(renewed),
        "leaseTransitions": 3,
    }
    if holder is not None:
        spec["holderIdentity"] = holder
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "nim-operator", "namespace": "ns", "resourceVersion": "42"},
        "spec": spec,
    }


# --- the decisions ------------------------------------------------------------------------------


class TestMicroTime:
    def test_exactly_six_fractional_digits_and_z(self) -> None:
        """Go parses metav1.MicroTime as RFC3339Micro; isoformat() would drop a zero fraction."""
        assert format_micro_time(NOW) == "2026-12-04T10:00:00.000000Z"
        moment = NOW.replace(microsecond=1234)
        assert format_micro_time(moment) == "2026-12-04T10:00:00.001234Z"
        local = moment.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
        assert format_micro_time(local) == "2026-12-04T10:00:00.001234Z"


class TestCanAcquire:
    """Expiry is how long this process has seen the Lease unchanged, on its own clock."""

    def test_a_missing_lease_is_created(self) -> None:
        assert can_acquire(None, "me", 0)

    def test_someone_elses_lease_is_not_taken_within_its_duration(self) -> None:
        fresh = lease("other")
        assert not is_expired(fresh, 14.9)
        assert not can_acquire(fresh, "me", 14.9)
        assert not can_acquire(fresh, "me", 15)  # at the duration exactly: still valid

    def test_a_lease_unchanged_for_longer_than_its_duration_is_taken(self) -> None:
        assert is_expired(lease("other"), 15.001)
        assert can_acquire(lease("other"), "me", 15.001)
        assert can_acquire(lease("other"), "me", 3600)

    def test_the_duration_is_the_leases_own(self) -> None:
        assert not can_acquire(lease("other", duration=30), "me", 20)
        assert can_acquire(lease("other", duration=15), "me", 20)

    def test_the_holders_clock_does_not_matter(self) -> None:
        """A renewTime an hour in the past (the leader's node clock behind) or ahead says
        nothing: only a Lease that stopped changing expires."""
        behind = lease("other", renewed=NOW - datetime.timedelta(hours=1))
        ahead = lease("other", renewed=NOW + datetime.timedelta(hours=1))
        assert not can_acquire(behind, "me", 0)
        assert not can_acquire(ahead, "me", 0)
        assert can_acquire(ahead, "me", 16)

    def test_our_own_lease_is_ours_even_when_fresh(self) -> None:
        assert can_acquire(lease("me"), "me", 0)

    def test_a_released_lease_is_taken_at_once(self) -> None:
        assert can_acquire(lease(None), "me", 0)
        assert can_acquire(lease(""), "me", 0)

    def test_a_lease_without_a_duration_is_expired(self) -> None:
        broken = lease("other")
        del broken["spec"]["leaseDurationSeconds"]
        assert can_acquire(broken, "me", 0)

    def test_a_renewal_is_any_change_of_the_spec(self) -> None:
        first = lease("other", renewed=NOW)
        assert lease_record(first) == lease_record(copy.deepcopy(first))
        assert lease_record(first) != lease_record(lease("other", renewed=NOW.replace(second=1)))
        assert lease_record(None) == lease_record({"spec": None})


class TestHeldLease:
    def write(self, current: dict[str, Any] | None, identity: str = "me") -> dict[str, Any]:
        return held_lease(
            current, name="nim-operator", namespace="ns", identity=identity, now=NOW, duration=15
        )

    def test_a_new_lease(self) -> None:
        body = self.write(None)
        assert body["apiVersion"] == "coordination.k8s.io/v1"
        assert body["kind"] == "Lease"
        assert body["metadata"] == {"name": "nim-operator", "namespace": "ns"}
        assert body["spec"] == {
            "holderIdentity": "me",
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-12-04T10:00:00.000000Z",
            "renewTime": "2026-12-04T10:00:00.000000Z",
            "leaseTransitions": 0,
        }

    def test_integers_are_integers(self) -> None:
        """The API server refuses 15.0 for an integer field: not a float, however it came."""
        body = held_lease(
            {**lease("other"), "spec": {**lease("other")["spec"], "leaseTransitions": 3.0}},
            name="nim-operator",
            namespace="ns",
            identity="me",
            now=NOW,
            duration=15.0,  # type: ignore[arg-type]
        )
        assert type(body["spec"]["leaseDurationSeconds"]) is int
        assert type(body["spec"]["leaseTransitions"]) is int
        assert '"leaseDurationSeconds": 15,' in json.dumps(body["spec"])
        assert type(Settings().lease_duration) is int

    def test_a_take_over_counts_a_transition_and_keeps_the_resource_version(self) -> None:
        body = self.write(lease("other", renewed=NOW - datetime.timedelta(minutes=1)))
        assert body["metadata"]["resourceVersion"] == "42"  # refused if it changed since
        assert body["spec"]["holderIdentity"] == "me"
        assert body["spec"]["leaseTransitions"] == 4
        assert body["spec"]["acquireTime"] == body["spec"]["renewTime"] == format_micro_time(NOW)

    def test_a_renewal_keeps_the_acquire_time_and_transitions(self) -> None:
        current = lease("me", renewed=NOW - datetime.timedelta(seconds=2))
        body = self.write(current)
        assert body["spec"]["acquireTime"] == current["spec"]["acquireTime"]
        assert body["spec"]["renewTime"] == format_micro_time(NOW)
        assert body["spec"]["leaseTransitions"] == 3

    def test_a_release_leaves_nobody_holding_it_briefly(self) -> None:
        body = released_lease(lease("me"), now=NOW)
        assert holder_of(body) == ""
        assert "holderIdentity" not in body["spec"]
        assert body["spec"]["leaseDurationSeconds"] == 1
        assert body["spec"]["leaseTransitions"] == 3
        assert body["metadata"]["resourceVersion"] == "42"
        assert can_acquire(body, "anyone", 0)


class TestSettings:
    def test_off_by_default_and_the_client_go_timings(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("NIM_OPERATOR_LEADER_ELECTION", raising=False)
        settings = Settings()
        assert settings.leader_election is False
        assert settings.lease_name == "nim-operator"
        assert (settings.lease_duration, settings.renew_deadline, settings.retry_period) == (
            15,
            10,
            2.0,
        )

    def test_the_lease_is_in_the_pods_namespace(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("NIM_OPERATOR_LEADER_ELECTION", "true")
        monkeypatch.setenv("POD_NAMESPACE", "nimstack-system")
        assert Settings().lease_namespace == "nimstack-system"
        monkeypatch.setenv("NIM_OPERATOR_LEASE_NAMESPACE", "elsewhere")
        assert Settings().lease_namespace == "elsewhere"
        account = tmp_path / "namespace"
        account.write_text("from-the-token\n")
        assert pod_namespace({}, account) == "from-the-token"
        assert pod_namespace({}, tmp_path / "absent") == ""

    def test_election_without_a_namespace_is_a_start_error(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setattr("nim_operator.settings.SERVICE_ACCOUNT_NAMESPACE", tmp_path / "absent")
        monkeypatch.delenv("POD_NAMESPACE", raising=False)
        monkeypatch.delenv("NIM_OPERATOR_LEASE_NAMESPACE", raising=False)
        monkeypatch.setenv("NIM_OPERATOR_LEADER_ELECTION", "false")
        assert Settings().lease_namespace == ""  # not needed
        monkeypatch.setenv("NIM_OPERATOR_LEADER_ELECTION", "true")
        with pytest.raises(ValueError, match=r"(?s)lease_namespace.*POD_NAMESPACE"):
            Settings()

    @pytest.mark.parametrize(
        ("variables", "refused"),
        [
            ({"NIM_OPERATOR_RENEW_DEADLINE": "15"}, "renew_deadline"),
            ({"NIM_OPERATOR_LEASE_DURATION": "8"}, "renew_deadline"),
            ({"NIM_OPERATOR_RETRY_PERIOD": "10"}, "retry_period"),
            ({"NIM_OPERATOR_LEASE_DURATION": "7.5"}, "lease_duration"),  # an integer field
            ({"NIM_OPERATOR_RETRY_PERIOD": "0"}, "retry_period"),
        ],
    )
    def test_timings_that_cannot_work_are_refused(
        self, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], refused: str
    ) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=refused):
            Settings()

    def test_identity_is_the_pod_and_a_suffix(self) -> None:
        first = default_identity({"POD_NAME": "nim-operator-7d9f-abcde"})
        second = default_identity({"POD_NAME": "nim-operator-7d9f-abcde"})
        assert first.startswith("nim-operator-7d9f-abcde_")
        assert first != second  # a restarted container is a new candidate
        assert default_identity({})  # the host name, outside a pod


# --- the elector against the emulator's Lease ---------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster(project_crds()) as emulated:
        yield emulated


def test_the_emulator_serves_leases(cluster: EmulatedCluster) -> None:
    assert cluster.inspect(lambda emulator: LEASE_RESOURCE in emulator.resources)


@pytest.mark.asyncio(loop_scope="session")
async def test_the_emulator_replaces_on_put_and_refuses_stale_versions(kube: KubeClient) -> None:
    """A PUT is the whole object (no merge); a write from an old read gets the API's 409."""
    name = f"put-{secrets.token_hex(3)}"
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "labels": {"keep": "me"}},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }
    first = await kube.create(LEASES, "elect", body)
    meta = {"name": name, "resourceVersion": first["metadata"]["resourceVersion"]}
    second = await kube.replace(LEASES, "elect", name, {**body, "metadata": meta, "spec": {}})
    assert second["spec"] == {}
    assert "labels" not in second["metadata"]
    assert second["metadata"]["uid"] == first["metadata"]["uid"]
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    conflict = (
        f'409 Conflict: Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": '
        "the object has been modified; please apply your changes to the latest version and "
        "try again"
    )
    with pytest.raises(ApiError) as refused:
        await kube.replace(LEASES, "elect", name, {**body, "metadata": meta})
    assert conflict in str(refused.value)
    assert type(refused.value) is ApiError  # not retried: the caller must read again
    with pytest.raises(ApiError, match="409 Conflict"):  # a merge patch from the old read too
        await kube.merge_patch(LEASES, "elect", name, {"metadata": meta, "spec": {"x": 1}})
    assert (await kube.get(LEASES, "elect", name) or {})["spec"] == {}
    with pytest.raises(ApiError, match="404"):
        await kube.replace(LEASES, "elect", "absent", body)


@pytest_asyncio.fixture(loop_scope="session")
async def kube(cluster: EmulatedCluster, tmp_path: Path) -> AsyncIterator[KubeClient]:
    client = KubeClient(
        connection_from_kubeconfig(cluster.write_kubeconfig(tmp_path / "kubeconfig")), retries=0
    )
    yield client
    await client.close()


def elector(kube: KubeClient, name: str, identity: str, **timings: float) -> LeaderElector:
    options: dict[str, Any] = {"lease_duration": 15, "renew_deadline": 10, "retry_period": 0.1}
    return LeaderElector(
        kube, namespace="elect", name=name, identity=identity, **{**options, **timings}
    )


@pytest.mark.asyncio(loop_scope="session")
async def test_of_two_candidates_at_once_exactly_one_wins(kube: KubeClient) -> None:
    name = f"race-{secrets.token_hex(3)}"
    a, b = elector(kube, name, "a"), elector(kube, name, "b")
    # Both create the missing Lease at once: one create wins, the other gets AlreadyExists.
    assert sorted(await asyncio.gather(a.try_acquire(), b.try_acquire())) == [False, True]
    winner, loser = (a, b) if a.leading else (b, a)
    live = await kube.get(LEASES, "elect", name)
    assert live is not None
    assert holder_of(live) == winner.identity
    # The loser sees a fresh Lease; a renewal by the winner changes nothing about that.
    assert await winner.renew() is True
    assert await loser.try_acquire() is False
    assert holder_of(await kube.get(LEASES, "elect", name)) == winner.identity


@pytest.mark.asyncio(loop_scope="session")
async def test_a_standby_times_expiry_on_its_own_clock(kube: KubeClient) -> None:
    """Expiry counts from when the standby last saw the Lease change (client-go's rule), so a
    renewal resets it and the holder's renewTime is never compared with this node's clock."""
    name = f"clock-{secrets.token_hex(3)}"
    holder = elector(kube, name, "holder")
    assert await holder.try_acquire()
    now = [1000.0]
    standby = elector(kube, name, "standby", monotonic=lambda: now[0])
    assert await standby.try_acquire() is False  # first seen at 1000
    now[0] = 1014.0
    assert await standby.try_acquire() is False
    assert await holder.renew() is True
    now[0] = 1016.0
    assert await standby.try_acquire() is False  # changed: seen anew at 1016
    now[0] = 1031.0
    assert await standby.try_acquire() is False  # 15 s unchanged: not more than its duration
    now[0] = 1031.5
    assert await standby.try_acquire() is True
    assert holder_of(await kube.get(LEASES, "elect", name)) == "standby"


@pytest.mark.asyncio(loop_scope="session")
async def test_a_take_over_races_on_the_resource_version(kube: KubeClient) -> None:
    """Two standbys that both read an expired Lease: the second PUT gets 409, not the Lease."""
    name = f"expired-{secrets.token_hex(3)}"
    stale = lease(
        "gone", renewed=datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(hours=1)
    )
    del stale["metadata"]["resourceVersion"]
    await kube.create(LEASES, "elect", {**stale, "metadata": {"name": name}})
    read = await kube.get(LEASES, "elect", name)
    assert read is not None
    now = datetime.datetime.now(tz=datetime.UTC)

    def takeover(identity: str) -> dict[str, Any]:
        return held_lease(
            read, name=name, namespace="elect", identity=identity, now=now, duration=15
        )

    taken = await kube.replace(LEASES, "elect", name, takeover("a"))
    assert taken["spec"]["leaseTransitions"] == 4
    with pytest.raises(Exception, match=r"409 Conflict: .* the object has been modified"):
        await kube.replace(LEASES, "elect", name, takeover("b"))
    assert holder_of(await kube.get(LEASES, "elect", name)) == "a"


@pytest.mark.asyncio(loop_scope="session")
async def test_a_leader_whose_lease_was_taken_stops_at_its_next_renewal(
    kube: KubeClient,
) -> None:
    name = f"taken-{secrets.token_hex(3)}"
    leader = elector(kube, name, "leader")
    assert await leader.try_acquire()
    live = await kube.get(LEASES, "elect", name)
    intruder = held_lease(
        live,
        name=name,
        namespace="elect",
        identity="intruder",
        now=datetime.datetime.now(tz=datetime.UTC),
        duration=15,
    )
    await kube.replace(LEASES, "elect", name, intruder)
    lost: list[str] = []
    await asyncio.wait_for(leader.keep(lost.append), timeout=5)
    assert len(lost) == 1
    assert "held by intruder" in lost[0]
    assert not leader.leading
    await leader.release()  # not ours: nothing is written
    assert holder_of(await kube.get(LEASES, "elect", name)) == "intruder"


@pytest.mark.asyncio(loop_scope="session")
async def test_a_leader_that_cannot_renew_gives_up_at_the_deadline(
    cluster: EmulatedCluster, kube: KubeClient
) -> None:
    name = f"unreachable-{secrets.token_hex(3)}"
    leader = elector(kube, name, "leader", lease_duration=3, renew_deadline=1.0, retry_period=0.2)
    assert await leader.try_acquire()
    failing = kmock.Response(status=503)
    cluster.inspect(
        lambda emulator: emulator.add_fault(
            1000,
            lambda request: request.resource == LEASE_RESOURCE and request.name == name,
            failing,
        )
    )
    lost: list[str] = []
    started = time.monotonic()
    await asyncio.wait_for(leader.keep(lost.append), timeout=5)
    assert len(lost) == 1
    assert "could not renew it for 1.0s" in lost[0]
    assert 0.9 <= time.monotonic() - started < 2.0


@pytest.mark.asyncio(loop_scope="session")
async def test_a_released_lease_is_taken_at_the_next_try(kube: KubeClient) -> None:
    name = f"released-{secrets.token_hex(3)}"
    first, second = elector(kube, name, "first"), elector(kube, name, "second")
    assert await first.try_acquire()
    assert not await second.try_acquire()
    await first.release()
    released = await kube.get(LEASES, "elect", name)
    assert released is not None
    assert holder_of(released) == ""
    assert released["spec"]["leaseDurationSeconds"] == 1
    assert await second.try_acquire()
    assert (await kube.get(LEASES, "elect", name) or {})["spec"]["leaseTransitions"] == 1


@pytest.mark.asyncio(loop_scope="session")
async def test_a_release_after_a_write_it_has_not_read_still_releases(kube: KubeClient) -> None:
    """A renewal that lands while the process shuts down leaves the elector with an older
    resourceVersion: the release is refused (409), reads again, and releases."""
    name = f"stale-{secrets.token_hex(3)}"
    leader, other = elector(kube, name, "leader"), elector(kube, name, "other")
    assert await leader.try_acquire()
    current = await kube.get(LEASES, "elect", name)
    assert current is not None
    # The same holder's write the elector has not seen (a label edit changes the version too).
    current["metadata"].setdefault("labels", {})["touched"] = "yes"
    await kube.replace(LEASES, "elect", name, current)
    await leader.release()
    assert holder_of(await kube.get(LEASES, "elect", name)) == ""
    assert await other.try_acquire()


def test_a_leader_that_lost_its_lease_is_gone_even_if_sigterm_does_not_end_it() -> None:
    """SIGTERM lets kopf stop cleanly; should that hang, the process still exits in time."""
    program = (
        "import signal, time\n"
        "from nim_operator.leadership import stop_this_process\n"
        "signal.signal(signal.SIGTERM, lambda *_: print('SIGTERM', flush=True))\n"
        "stop_this_process(0.5)('lost')\n"
        "time.sleep(30)\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == "SIGTERM\n"
    assert time.monotonic() - started < 15  # not the 30 s sleep


# --- acceptance: two operator processes ---------------------------------------------------------

# Short, so that the test is quick, but with room for a loaded machine: a leader whose renewals
# are starved for RENEW_DEADLINE seconds would (rightly) give up.
LEASE_DURATION = 6
RENEW_DEADLINE = 4
RETRY_PERIOD = 0.5
# How late a standby may notice what it polls for on two busy cores, beyond the rules' bound.
SLACK = 1.0


class Replica:
    """One operator process as the manifest runs it: its pod name, its own bearer token."""

    def __init__(self, cluster: EmulatedCluster, work: Path, pod: str) -> None:
        self.pod = pod
        self.token = f"token-of-{pod}"
        self.process = OperatorProcess(
            cluster.write_kubeconfig(work / f"{pod}.kubeconfig", token=self.token),
            work / f"{pod}.log",
            env={"POD_NAME": pod, "POD_NAMESPACE": LEASE_NAMESPACE},
            leader_election="true",
            lease_duration=str(LEASE_DURATION),
            renew_deadline=str(RENEW_DEADLINE),
            retry_period=str(RETRY_PERIOD),
            reconcile_interval="2",
            child_event_delay="0.2",
        )

    def holds(self, lease: dict[str, Any] | None) -> bool:
        return holder_of(lease).startswith(f"{self.pod}_")

    def liveness(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.process.liveness, timeout=5) as response:
            assert response.status == 200
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")


def lease_history(cluster: EmulatedCluster) -> list[dict[str, Any]]:
    """Every version of the operator's Lease the emulator stored, oldest first."""

    def versions(emulator: Any) -> list[dict[str, Any]]:
        key = (LEASE_RESOURCE, LEASE_NAMESPACE, "nim-operator")
        if key not in emulator.objects:
            return []
        return [copy.deepcopy(dict(v.raw)) for v in emulator.objects[key].history.raw if v]

    return cluster.inspect(versions)


def requests_of(cluster: EmulatedCluster, token: str) -> list[tuple[str, str, str]]:
    """(method, resource plural, name) of each request made with `token`, in order."""

    def select(emulator: Any) -> list[tuple[str, str, str]]:
        return [
            (str(request.method.value), str(request.resource.plural), str(request.name or ""))
            for request in emulator
            if request.headers.get("Authorization") == f"Bearer {token}"
            and request.resource is not None
            and request.resource.plural
        ]

    return cluster.inspect(select)


def writes_of(cluster: EmulatedCluster, token: str) -> set[tuple[str, str]]:
    """(resource plural, name) of each object written with `token`."""
    return {
        (plural, name) for method, plural, name in requests_of(cluster, token) if method != "GET"
    }


def log_says(replica: Replica, text: str) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return text in replica.log()

    return probe


def seconds(later: str, earlier: str) -> float:
    end, start = datetime.datetime.fromisoformat(later), datetime.datetime.fromisoformat(earlier)
    return (end - start).total_seconds()


@pytest.mark.asyncio(loop_scope="session")
async def test_two_replicas_one_reconciles_and_the_other_takes_over(tmp_path: Path) -> None:
    with EmulatedCluster(project_crds()) as cluster:
        admin = KubeClient(
            connection_from_kubeconfig(cluster.write_kubeconfig(tmp_path / "admin")),
            user_agent="ha-test",
        )
        namespace = f"ha-{secrets.token_hex(3)}"
        pods = ("op-a", "op-b", "op-c", "op-d")
        replicas = [Replica(cluster, tmp_path, pod) for pod in pods]
        try:
            for name in (LEASE_NAMESPACE, namespace):
                await admin.create(NAMESPACES, None, {"metadata": {"name": name}})
            await ha_scenario(cluster, admin, namespace, replicas)
        finally:
            for replica in replicas:
                replica.process.stop()
            await admin.close()


async def ha_scenario(
    cluster: EmulatedCluster, admin: KubeClient, namespace: str, replicas: list[Replica]
) -> None:
    def context() -> str:
        return "\n".join(f"--- {r.pod}:\n{r.process.log_tail(30)}" for r in replicas)

    async def current_lease() -> dict[str, Any] | None:
        return await admin.get(LEASES, LEASE_NAMESPACE, "nim-operator")

    async def held_by(replica: Replica, within: float) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            live = await current_lease()
            return live if replica.holds(live) else None

        return await eventually(
            probe, within=within, interval=0.05, what=f"{replica.pod} holds it", context=context
        )

    async def reconciled(name: str) -> None:
        body = {"apiVersion": "nimstack.dev/v1alpha1", "kind": "NIMService"}
        await admin.create(
            NIMSERVICES, namespace, {**body, "metadata": {"name": name}, "spec": cpu_spec()}
        )

        async def children() -> bool:
            deployment = await admin.get(DEPLOYMENTS, namespace, name)
            return deployment is not None and await admin.get(SERVICES, namespace, name) is not None

        await eventually(children, within=30, what=f"{name}'s children", context=context)

    a, b, c, d = replicas
    # Both start at once; exactly one of them gets the Lease.
    await asyncio.gather(*(asyncio.to_thread(r.process.start) for r in (a, b)))
    live = await eventually(current_lease, within=30, what="the Lease", context=context)
    leader, standby = (a, b) if a.holds(live) else (b, a)
    assert leader.holds(live), live
    assert not standby.holds(live)
    await reconciled("first")
    assert leader.holds(await current_lease())
    assert "standing by as op-" in standby.log()

    async def names_the_leader() -> bool:
        return f"is held by {leader.pod}_" in standby.log()

    await eventually(
        names_the_leader,
        within=10,
        what="the standby names the leader",
        context=context,
    )
    assert "is held by  (" not in standby.log()  # never announces an empty holder

    # Both answer the liveness probe: the standby itself, the leader through kopf.
    standing = standby.liveness()["leaderElection"]
    assert standing["leading"] is False
    assert standing["holder"].startswith(f"{leader.pod}_")
    assert "leaderElection" not in leader.liveness()  # kopf's own endpoint now

    # The standby has touched nothing but the Lease: no NIMService, child or watch at all.
    touched = requests_of(cluster, standby.token)
    assert touched, "the standby polls the Lease"
    assert {plural for _, plural, _ in touched} == {"leases"}, touched
    assert {method for method, _, _ in touched} == {"GET"}, touched
    assert {("deployments", "first"), ("services", "first")} <= writes_of(cluster, leader.token)

    # SIGKILL: nothing released. The standby takes over once the Lease has expired.
    last_renewal = (await current_lease() or {})["spec"]["renewTime"]
    killed_at = format_micro_time(datetime.datetime.now(tz=datetime.UTC))
    leader.process.kill()
    taken = await held_by(standby, within=LEASE_DURATION + 10 * RETRY_PERIOD + 10)
    history = lease_history(cluster)
    before = [v for v in history if leader.holds(v)][-1]["spec"]["renewTime"]
    assert seconds(before, last_renewal) >= 0
    acquired = taken["spec"]["acquireTime"]
    # Never before it expired; within a lease duration and a couple of retry periods.
    assert seconds(acquired, before) > LEASE_DURATION
    took = seconds(acquired, killed_at)
    assert took <= LEASE_DURATION + 2 * RETRY_PERIOD + SLACK, took
    print(
        f"\nSIGKILL: taken over {took:.2f}s after the kill, "
        f"{seconds(acquired, before):.2f}s after the last renewal"
    )
    assert taken["spec"]["leaseTransitions"] == 1
    await reconciled("after-kill")
    new_leader = standby
    assert {("deployments", "after-kill"), ("services", "after-kill")} <= writes_of(
        cluster, new_leader.token
    )

    # The kubelet would restart the killed container: a new standby (two, here). A standby
    # stops at once on SIGTERM (a rollout deletes it), writing nothing.
    await asyncio.gather(*(asyncio.to_thread(r.process.start) for r in (c, d)))
    for replica in (c, d):
        await eventually(
            log_says(replica, f"standing by as {replica.pod}_"),
            within=10,
            what=f"{replica.pod} standing by",
            context=context,
        )
    assert await asyncio.to_thread(d.process.stop, 10) == 0, d.process.log_tail()
    assert {method for method, _, _ in requests_of(cluster, d.token)} == {"GET"}

    # SIGTERM of the leader: it releases the Lease on its way out, and the standby takes it at
    # its next try.
    stopped_at = format_micro_time(datetime.datetime.now(tz=datetime.UTC))
    exit_code = await asyncio.to_thread(new_leader.process.stop)
    assert exit_code == 0, new_leader.process.log_tail()
    assert "released the Lease" in new_leader.log()
    taken = await held_by(c, within=10 * RETRY_PERIOD + 10)
    history = lease_history(cluster)
    released = [v for v in history if not holder_of(v)][-1]["spec"]["renewTime"]
    acquired = taken["spec"]["acquireTime"]
    after_release = seconds(acquired, released)
    assert 0 <= after_release <= RETRY_PERIOD + SLACK, after_release
    print(
        f"SIGTERM: taken over {seconds(acquired, stopped_at):.2f}s after the signal, "
        f"{after_release:.2f}s after the release"
    )
    await reconciled("after-stop")
    assert ("deployments", "after-stop") in writes_of(cluster, c.token)

    # A leader that finds the Lease taken from under it stops reconciling and exits.
    intruder = held_lease(
        await current_lease(),
        name="nim-operator",
        namespace=LEASE_NAMESPACE,
        identity="intruder",
        now=datetime.datetime.now(tz=datetime.UTC),
        duration=3600,
    )
    await admin.replace(LEASES, LEASE_NAMESPACE, "nim-operator", intruder)

    async def exited() -> bool:
        return not c.process.alive()

    await eventually(exited, within=RETRY_PERIOD + 10, what="op-c exiting", context=context)
    assert "lost the Lease nim-ha-system/nim-operator (it is held by intruder now)" in c.log()
