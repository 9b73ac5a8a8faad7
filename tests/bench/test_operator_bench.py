"""`python -m bench.operator` runs end to end and measures what it claims, on a tiny N.

The real benchmark (N = 1, 100, 1,000, one-minute idle windows) is not run here; this runs the
same command with N = 2 and a 3-second timer against the API-server emulator, the real operator
process and the no-op baseline, and checks that the numbers it reports are there and plausible.
Then the attribution of each change to its writer (bench/operator/attribution.py): on example
bodies, against the emulator's request log on a small run, and the wait for the cluster to
settle before the idle window.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kopf
import pytest

from bench.operator.attribution import Ledger, attribute, is_operator, snapshot, summarize
from bench.operator.backends import EmulatorBackend
from bench.operator.scenario import Run, RunConfig
from bench.operator.timeline import Timeline

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("operator-bench")
    command = [
        sys.executable,
        "-m",
        "bench.operator",
        *("--counts", "2", "--interval", "3", "--window", "3"),
        *("--settle", "1", "--settle-max", "60"),
        *("--probes", "2", "--backend", "kmock", "--out", str(out)),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nim_operator / a no-op kopf operator" in done.stdout
    assert (out / "operator.png").stat().st_size > 10_000
    assert (out / "operator.md").read_text().startswith("# Operator benchmark")
    data: dict[str, object] = json.loads((out / "operator.json").read_text())
    data["_out"] = str(out)
    return data


def results_dir(results: dict[str, object]) -> Path:
    return Path(str(results["_out"]))


def test_every_milestone_is_measured(results: dict[str, object]) -> None:
    (result,) = results["results"]  # type: ignore[misc]
    ours = result["ours"]
    assert result["count"] == 2
    # Children appear before the status that reports them, which comes before kopf is done.
    assert 0 < ours["burst.children_p50_s"] <= ours["burst.observed_p50_s"]
    assert ours["burst.observed_p50_s"] <= ours["burst.handled_p50_s"]
    assert 0 < ours["probe.children_p50_s"] < 30
    assert ours["idle.rss_mib"] > 20
    assert ours["idle.cpu_pct"] is not None


def test_timer_ticks_change_nothing_and_requests_are_counted(results: dict[str, object]) -> None:
    (result,) = results["results"]  # type: ignore[misc]
    ours = result["ours"]
    assert ours["idle.changes"] == 0
    assert ours["requests.idle.expected_ticks"] >= 1
    # A tick applies at most the three children (most ticks nothing: the watches prove the
    # applies no-ops).
    assert ours["requests.idle.by_verb_per_tick"].get("apply", 0) <= 3
    assert ours["requests.idle.per_tick"] < 10
    assert ours["requests.burst.per_object"] > ours["requests.burst.reconciles_per_object"]


def test_the_operator_writes_nothing_once_the_cluster_settled(results: dict[str, object]) -> None:
    (result,) = results["results"]  # type: ignore[misc]
    ours = result["ours"]
    (run,) = result["runs"]["nimstack"]
    # On the emulator the benchmark itself plays the controller manager: its last write is the
    # pods' and Deployments' status, before the operator reports Ready, so it settles at once.
    assert ours["settle.unsettled"] == 0
    assert run["settle"]["settled"] is True
    assert run["settle"]["tail_s"] < 1
    assert run["settle"]["took_s"] < 10
    assert ours["idle.writes.operator_writes"] == 0
    assert run["idle"]["writes"]["changes"] == 0
    check = next(c for c in result["checks"] if c["what"].startswith("operator writes"))
    assert check["pass"] is True
    # What made the burst, by whom: the operator applied the children and wrote the status;
    # the benchmark, playing kubelet and controller manager, wrote pods and Deployment status.
    burst = run["burst"]["writes"]["by_writer"]
    assert burst["nimstack-operator Apply"] >= 4  # 2 Deployments, 2 Services
    assert burst["nimstack-operator Update status"] >= 2
    assert burst["nimstack-bench Update status"] >= 4  # 2 pods, 2 Deployments
    assert run["burst"]["writes"]["operator_writes"] > 0
    # Every status patch the operator sent in the idle window would show as a MODIFIED event;
    # there are none of either, and over the whole run each patch is counted against them.
    status = run["status_writes"]
    assert status["idle"] == {"patches": 0, "modified": 0, "unchanged": 0}
    assert status["run"]["patches"] >= status["run"]["modified"] >= 2
    markdown = (results_dir(results) / "operator.md").read_text()
    assert "who changed what (nim_operator, run 1)" in markdown
    assert "| idle | | | nothing | 0 |" in markdown


def test_the_baseline_ran_and_ratios_are_reported(results: dict[str, object]) -> None:
    (result,) = results["results"]  # type: ignore[misc]
    assert result["noop"]["burst.handled_p50_s"] > 0
    assert result["ratios"]["rss"] > 0.5
    names = {check["what"] for check in result["checks"]}
    assert any("RSS" in name for name in names)
    assert all(isinstance(check["pass"], bool | None) for check in result["checks"])


_HANDLER_MODULES = ("nim_operator.handlers_nimcache",)


def _registrations(module: str) -> set[tuple[object, ...]]:
    """What kopf would run per object for `module`: each resource handler's kind, resource,
    filters and timing (startup/cleanup activities differ on purpose: the baseline connects
    nothing)."""
    import importlib
    import inspect

    import kopf

    previous = kopf.get_default_registry()
    registry = kopf.OperatorRegistry()
    kopf.set_default_registry(registry)
    try:
        # A fresh import into an empty registry: the decorators register at import time (the
        # NIMCache handlers too, which nim_operator.handlers imports).
        for name in (module, *_HANDLER_MODULES):
            sys.modules.pop(name, None)
        importlib.import_module(module)
    finally:
        kopf.set_default_registry(previous)
        for name in (module, *_HANDLER_MODULES):
            sys.modules.pop(name, None)
    found = set()
    for kind in ("_watching", "_spawning", "_changing", "_indexing", "_webhooks"):
        for handler in getattr(registry, kind).get_all_handlers():
            found.add(
                (
                    kind,
                    str(handler.id),
                    str(getattr(handler, "selector", None)),
                    str(getattr(handler, "labels", None)),
                    str(getattr(handler, "reason", None)),
                    getattr(handler, "interval", None),
                    getattr(handler, "initial_delay", None),
                    getattr(handler, "when", None) is not None,
                    # A sync handler runs in kopf's thread pool: that costs, so it must match.
                    inspect.iscoroutinefunction(handler.fn),
                )
            )
    return found


def test_the_baseline_registers_what_the_operator_registers() -> None:
    """The no-op operator is a fair floor only while it watches and times what ours does."""
    ours = _registrations("nim_operator.handlers")
    noop = _registrations("bench.operator.noop_operator")
    assert len(ours) >= 10
    assert ours == noop


def test_a_new_operator_process_takes_over_without_changing_anything(
    results: dict[str, object],
) -> None:
    (result,) = results["results"]  # type: ignore[misc]
    ours = result["ours"]
    assert ours["restart.changes"] == 0
    assert ours["restart.peak_rss_mib"] >= ours["restart.rss_mib"] > 20
    assert ours["requests.restart.per_object"] > 0  # it read what was there
    assert 0 < ours["restart.resync_s"] < ours["restart.window_s"]


# --- who changed what: attribution by managedFields ----------------------------------------------
#
# The bodies below are written by hand in the shape kube-apiserver returns them (managedFields
# entries with whole-second `time`s, FieldsV1 sets, a `subresource` on status writes; fields the
# emulator always sets left out), not captured from a live cluster: none was available here.

DEPLOYMENT_BEFORE: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "nim-0007",
        "namespace": "nimbench-1a2b3c",
        "uid": "0b5c1a52-64a6-4f0e-9d0e-7f5d8f1d2c11",
        "resourceVersion": "48211",
        "generation": 1,
        "creationTimestamp": "2026-12-04T10:00:03Z",
        "labels": {"app.kubernetes.io/name": "nim-0007"},
        "annotations": {"deployment.kubernetes.io/revision": "1"},
        "ownerReferences": [
            {
                "apiVersion": "nimstack.dev/v1alpha1",
                "kind": "NIMService",
                "name": "nim-0007",
                "uid": "9a1e0c55-2c1f-4a4b-8f5e-3b9f1a0d7e42",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
        "managedFields": [
            {
                "manager": "nimstack-operator",
                "operation": "Apply",
                "apiVersion": "apps/v1",
                "time": "2026-12-04T10:00:03Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {
                        "f:labels": {"f:app.kubernetes.io/name": {}},
                        "f:ownerReferences": {
                            'k:{"uid":"9a1e0c55-2c1f-4a4b-8f5e-3b9f1a0d7e42"}': {}
                        },
                    },
                    "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {}},
                },
            },
            {
                "manager": "kube-controller-manager",
                "operation": "Update",
                "apiVersion": "apps/v1",
                "time": "2026-12-04T10:00:04Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {
                        "f:annotations": {".": {}, "f:deployment.kubernetes.io/revision": {}}
                    }
                },
            },
            {
                "manager": "kube-controller-manager",
                "operation": "Update",
                "subresource": "status",
                "apiVersion": "apps/v1",
                "time": "2026-12-04T10:00:04Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:status": {
                        "f:conditions": {
                            ".": {},
                            'k:{"type":"Progressing"}': {".": {}, "f:reason": {}, "f:status": {}},
                        },
                        "f:observedGeneration": {},
                    }
                },
            },
        ],
    },
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "nim-0007"}}},
    "status": {
        "observedGeneration": 1,
        "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetCreated"}],
    },
}


def _deployment_after_controller_manager() -> dict[str, Any]:
    """The controller manager's next status write: the ReplicaSet now has its pod."""
    after = copy.deepcopy(DEPLOYMENT_BEFORE)
    after["metadata"]["resourceVersion"] = "49730"
    after["status"].update({"replicas": 1, "updatedReplicas": 1, "unavailableReplicas": 1})
    status_entry = after["metadata"]["managedFields"][2]
    status_entry["time"] = "2026-12-04T10:01:12Z"
    status_entry["fieldsV1"]["f:status"].update(
        {"f:replicas": {}, "f:updatedReplicas": {}, "f:unavailableReplicas": {}}
    )
    return after


NIMSERVICE_BEFORE: dict[str, Any] = {
    "apiVersion": "nimstack.dev/v1alpha1",
    "kind": "NIMService",
    "metadata": {
        "name": "nim-0007",
        "namespace": "nimbench-1a2b3c",
        "uid": "9a1e0c55-2c1f-4a4b-8f5e-3b9f1a0d7e42",
        "resourceVersion": "48230",
        "generation": 1,
        "finalizers": ["nimstack.dev/finalizer"],
        "annotations": {"nimstack.dev/last-handled-configuration": '{"spec": {}}'},
        "managedFields": [
            {
                "manager": "nimstack-bench",
                "operation": "Update",
                "apiVersion": "nimstack.dev/v1alpha1",
                "time": "2026-12-04T10:00:03Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {".": {}, "f:image": {}, "f:replicas": {}}},
            },
            {
                "manager": "kopf",
                "operation": "Update",
                "apiVersion": "nimstack.dev/v1alpha1",
                "time": "2026-12-04T10:00:03Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {
                        "f:annotations": {
                            ".": {},
                            "f:nimstack.dev/last-handled-configuration": {},
                        },
                        "f:finalizers": {".": {}, 'v:"nimstack.dev/finalizer"': {}},
                    }
                },
            },
            {
                "manager": "nimstack-operator",
                "operation": "Update",
                "subresource": "status",
                "apiVersion": "nimstack.dev/v1alpha1",
                "time": "2026-12-04T10:00:04Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": {".": {}, "f:conditions": {}, "f:observedGeneration": {}}},
            },
        ],
    },
    "spec": {"image": {"repository": "registry.k8s.io/pause"}, "replicas": 1},
    "status": {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "False", "reason": "NoReplicasAvailable"}],
    },
}


def _nimservice_after_operator(*, same_second: bool = False) -> dict[str, Any]:
    """The operator reports what the controller manager wrote into the Deployment."""
    after = copy.deepcopy(NIMSERVICE_BEFORE)
    after["metadata"]["resourceVersion"] = "49741"
    after["status"]["conditions"][0]["reason"] = "PodsUnschedulable"
    if not same_second:
        after["metadata"]["managedFields"][2]["time"] = "2026-12-04T10:01:12Z"
    return after


def test_a_deployment_status_write_is_the_controller_managers() -> None:
    before = snapshot(DEPLOYMENT_BEFORE)
    found = attribute(before, snapshot(_deployment_after_controller_manager()))
    assert found.writers == ("kube-controller-manager Update status",)
    assert found.areas == ("status",)
    assert found.how == "time"
    assert not any(is_operator(w) for w in found.writers)


def test_a_nimservice_status_write_is_the_operators() -> None:
    before = snapshot(NIMSERVICE_BEFORE)
    found = attribute(before, snapshot(_nimservice_after_operator()))
    assert found.writers == ("nimstack-operator Update status",)
    assert found.areas == ("status",)
    assert found.how == "time"
    # Written again within the same second: no `time` moved, so the owner of status answers.
    again = attribute(before, snapshot(_nimservice_after_operator(same_second=True)))
    assert again.writers == ("nimstack-operator Update status",)
    assert again.how == "owner"
    assert all(is_operator(w) for w in again.writers)


def test_an_object_without_managed_fields_is_attributed_to_nobody() -> None:
    bare = copy.deepcopy(DEPLOYMENT_BEFORE)
    del bare["metadata"]["managedFields"]
    changed = _deployment_after_controller_manager()
    changed["metadata"]["managedFields"] = None  # present and null: as absent
    changed["metadata"]["labels"] = None
    found = attribute(snapshot(bare), snapshot(changed))
    assert found.writers == ()
    assert found.how == "unknown"
    assert found.areas == ("metadata.labels", "status")
    ledger = Ledger()
    assert ledger.observe("deployments", "ADDED", bare, 1.0) is not None
    change = ledger.observe("deployments", "MODIFIED", changed, 2.0)
    assert change is not None
    assert change.by_others
    assert not change.by_operator
    assert ledger.last_by_others == 2.0
    # Nothing in it need be there: no metadata, or a null one, or junk in managedFields.
    assert ledger.observe("pods", "ADDED", {"metadata": None}, 3.0) is not None
    odd = {"metadata": {"name": "x", "managedFields": [None, {"time": None}]}}
    assert ledger.observe("pods", "MODIFIED", odd, 4.0) is not None


def test_the_emulator_restamping_every_entry_is_not_taken_for_a_write_by_each() -> None:
    """The emulator stamps every entry with the time of each write; a real server only the
    writer's. Several stamped entries fall back to the fields, then to their owner."""
    after = _nimservice_after_operator()
    for entry in after["metadata"]["managedFields"]:
        entry["time"] = "2026-12-04T10:01:12Z"
    found = attribute(snapshot(NIMSERVICE_BEFORE), snapshot(after))
    assert found.writers == ("nimstack-operator Update status",)
    # The controller manager's status write adds fields to its entry: that names it.
    deployment = _deployment_after_controller_manager()
    for entry in deployment["metadata"]["managedFields"]:
        entry["time"] = "2026-12-04T10:01:12Z"
    found = attribute(snapshot(DEPLOYMENT_BEFORE), snapshot(deployment))
    assert (found.writers, found.how) == (("kube-controller-manager Update status",), "fieldsV1")


def test_the_ledger_counts_each_change_once_by_whom() -> None:
    ledger = Ledger()
    ledger.observe("deployments", "ADDED", DEPLOYMENT_BEFORE, 1.0)
    ledger.observe("nimservices", "ADDED", NIMSERVICE_BEFORE, 1.0)
    ledger.observe("deployments", "MODIFIED", _deployment_after_controller_manager(), 2.0)
    ledger.observe("nimservices", "MODIFIED", _nimservice_after_operator(), 2.5)
    # A watch that started over lists the same versions again: no change.
    assert ledger.observe("nimservices", "ADDED", _nimservice_after_operator(), 3.0) is None
    ledger.observe("deployments", "DELETED", DEPLOYMENT_BEFORE, 4.0)
    summary = summarize(ledger.between(1.5, 5.0))
    assert summary["changes"] == 3
    assert summary["operator_writes"] == 1
    assert summary["other_writes"] == 2  # the controller manager's, and a deletion by nobody known
    assert summary["by_writer"]["kube-controller-manager Update status"] == 1
    assert summary["detail"]["nimservices"] == {"nimstack-operator Update status": {"status": 1}}
    assert summary["by_event"] == {"DELETED": 1, "MODIFIED": 2}


async def test_settling_waits_for_a_quiet_spell_of_everyone_but_the_operator() -> None:
    timeline = Timeline(kopf.ConnectionInfo(server="http://127.0.0.1:9"), "ns", agent="test")
    ledger = timeline.ledger
    start = time.monotonic()
    ledger.observe("deployments", "ADDED", DEPLOYMENT_BEFORE, start)
    ledger.observe("deployments", "MODIFIED", _deployment_after_controller_manager(), start)
    # The operator's own writes do not keep it unsettled.
    ledger.observe("nimservices", "ADDED", NIMSERVICE_BEFORE, start)
    ledger.observe("nimservices", "MODIFIED", _nimservice_after_operator(), start + 0.1)
    settled_at, settled = await timeline.settle(start, quiet=0.4, cap=5)
    assert settled
    assert 0.4 <= settled_at - start < 2
    # A spell that had begun before counts; and the cap ends the wait, unsettled.
    assert (await timeline.settle(time.monotonic(), quiet=0.2, cap=5))[1]
    ledger.last_by_others = time.monotonic()
    began = time.monotonic()
    settled_at, settled = await timeline.settle(began, quiet=10, cap=0.3)
    assert not settled
    assert 0.3 <= settled_at - began < 2


def test_a_stamp_that_cannot_explain_the_change_names_nobody() -> None:
    """On the emulator an object with one entry is restamped by any write, e.g. kopf adding a
    finalizer the emulator does not track: that entry owns no finalizers, so it is not named."""
    created = copy.deepcopy(NIMSERVICE_BEFORE)
    created["metadata"]["managedFields"] = created["metadata"]["managedFields"][:1]
    del created["metadata"]["finalizers"]
    finalized = copy.deepcopy(created)
    finalized["metadata"]["finalizers"] = ["nimstack.dev/finalizer"]
    finalized["metadata"]["managedFields"][0]["time"] = "2026-12-04T10:00:05Z"
    found = attribute(snapshot(created), snapshot(finalized))
    assert (found.writers, found.how) == ((), "unknown")


async def test_attribution_agrees_with_the_emulators_request_log(tmp_path: Path) -> None:
    """A small run, then each MODIFIED event's writers against the requests the emulator served:
    every writer named must have written to that object just before (within 2 s)."""
    backend = EmulatorBackend(tmp_path)
    await backend.start()
    try:
        config = RunConfig(count=4, interval=3, window=2, settle=1, settle_max=30, probes=1)
        run = Run(backend, config, tmp_path)
        await run.execute()
        served = await backend.requests(0)
    finally:
        await backend.stop()
    writes = [r for r in served[1] if r.is_write]
    named = unknown = 0
    for change in run.timeline.ledger.changes:
        if change.event != "MODIFIED":
            continue
        if not change.writers:
            unknown += 1
            continue
        sent = {
            ("kopf" if r.agent.startswith("kopf") else r.agent, r.subresource == "status")
            for r in writes
            if r.resource == change.kind and r.name == change.name and 0 <= change.at - r.at < 2
        }
        for writer in change.writers:
            assert (writer.split(" ")[0], writer.endswith(" status")) in sent, (change, sent)
            named += 1
    assert named >= 4 * 4  # per NIMService: kopf, operator status, pod and Deployment status
    # kopf's finalizer: the emulator keeps no managedFields for finalizers (a real server does).
    assert unknown <= 4 + 1
