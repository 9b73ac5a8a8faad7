"""The pod view timer ticks read: fed by watch events, refreshed by lists, bounded in age."""

from __future__ import annotations

from typing import Any

from nim_operator.conditions import diagnose_pods
from nim_operator.pod_cache import PodCache
from nim_operator.render.labels import selector_labels


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pod(name: str, owner: str = "llm", phase: str = "Running", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {**selector_labels(owner), **labels},
            "uid": f"uid-{name}",
            "managedFields": [{"manager": "kubelet"}],
        },
        "spec": {"containers": [{"name": "nim", "image": "x"}]},
        "status": {"phase": phase},
    }


def make() -> tuple[PodCache, Clock]:
    clock = Clock()
    return PodCache(max_age=600, clock=clock), clock


def test_nothing_is_fresh_until_the_owner_was_listed() -> None:
    cache, _ = make()
    cache.seen(None, pod("a"))
    assert cache.fresh(("ns", "llm")) is None


def test_watch_events_update_what_a_list_found() -> None:
    cache, _ = make()
    cache.listed(("ns", "llm"), [pod("a", phase="Pending")])
    cache.seen("MODIFIED", pod("a", phase="Running"))
    cache.seen("ADDED", pod("b"))
    cache.seen("ADDED", pod("other", owner="else"))
    fresh = cache.fresh(("ns", "llm"))
    assert fresh is not None
    assert {(p["metadata"]["name"], p["status"]["phase"]) for p in fresh} == {
        ("a", "Running"),
        ("b", "Running"),
    }
    cache.seen("DELETED", pod("a"))
    assert [p["metadata"]["name"] for p in cache.fresh(("ns", "llm")) or []] == ["b"]


def test_a_list_replaces_everything_known_including_ghosts() -> None:
    cache, _ = make()
    cache.listed(("ns", "llm"), [pod("a"), pod("ghost")])  # ghost's DELETED event is lost
    cache.listed(("ns", "llm"), [pod("a")])
    assert [p["metadata"]["name"] for p in cache.fresh(("ns", "llm")) or []] == ["a"]


def test_an_old_list_is_not_trusted() -> None:
    cache, clock = make()
    cache.listed(("ns", "llm"), [pod("a")])
    clock.now += 600
    assert cache.fresh(("ns", "llm")) is not None
    clock.now += 1
    assert cache.fresh(("ns", "llm")) is None


def test_only_metadata_and_status_are_kept() -> None:
    cache, _ = make()
    cache.listed(("ns", "llm"), [pod("a")])
    (kept,) = cache.fresh(("ns", "llm")) or []
    assert set(kept) == {"metadata", "status"}
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["labels"] == selector_labels("llm")


def test_pods_not_labelled_as_a_nimservice_are_ignored() -> None:
    cache, _ = make()
    cache.listed(("ns", "llm"), [])
    stray = pod("stray")
    del stray["metadata"]["labels"]["app.kubernetes.io/name"]
    cache.seen("ADDED", stray)
    assert cache.fresh(("ns", "llm")) == []


def test_forget_drops_the_owner() -> None:
    cache, _ = make()
    cache.listed(("ns", "llm"), [pod("a")])
    cache.forget(("ns", "llm"))
    assert cache.fresh(("ns", "llm")) is None


def _as_a_cluster_reports_it(sample: dict[str, Any]) -> dict[str, Any]:
    """A test_conditions sample pod with the status fields a kubelet adds and nobody reads."""
    status = dict(sample["status"])
    status |= {"hostIP": "10.0.0.4", "podIPs": [{"ip": "10.1.2.3"}], "qosClass": "Burstable"}
    status["conditions"] = [
        {**c, "lastProbeTime": None, "lastTransitionTime": "2026-11-21T11:00:00Z"}
        for c in status.get("conditions") or []
    ]
    status["containerStatuses"] = [
        {
            **c,
            "image": "nvcr.io/nim/meta/llama:1.8",
            "imageID": "sha256:" + "0" * 64,
            "containerID": "containerd://" + "1" * 64,
            "volumeMounts": [{"name": "cache", "mountPath": "/opt/nim/.cache"}],
        }
        for c in status.get("containerStatuses") or []
    ]
    return {**sample, "status": status}


def test_the_cache_keeps_what_the_status_is_computed_from_and_no_more() -> None:
    from tests.operator import test_conditions as samples

    cache, _ = make()
    names = [n for n, v in vars(samples).items() if n.isupper() and isinstance(v, dict)]
    pods = [getattr(samples, n) for n in names if "status" in getattr(samples, n)]
    assert len(pods) >= 8
    for sample in pods:
        full = _as_a_cluster_reports_it(sample)
        cache.listed(("ns", "llm"), [full])
        (kept,) = cache.fresh(("ns", "llm")) or []
        assert diagnose_pods([kept]) == diagnose_pods([full])
        assert "hostIP" not in kept["status"]
        for container in kept["status"].get("containerStatuses") or []:
            assert container.keys() <= {"name", "ready", "restartCount", "state", "lastState"}
