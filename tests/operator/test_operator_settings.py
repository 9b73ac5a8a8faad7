"""Operator settings from the environment, kopf's settings, and the process they configure."""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import kopf
import pytest

from nim_operator.child_records import WATCHED_CACHE_CHILDREN, WATCHED_CHILDREN
from nim_operator.settings import FINALIZER, WORKER_IDLE_TIMEOUT, Settings, configure_kopf
from tests.support.kmock_cluster import EmulatedCluster, project_crds
from tests.support.kmock_harness import OperatorProcess


def test_defaults_suit_production(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in [v for v in os.environ if v.startswith("NIM_OPERATOR_")]:
        monkeypatch.delenv(variable)
    settings = Settings()
    assert settings.reconcile_interval == 60
    assert settings.namespace_patterns() == []  # the whole cluster
    assert settings.liveness_endpoint == "http://0.0.0.0:8080/healthz"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIM_OPERATOR_RECONCILE_INTERVAL", "5")
    monkeypatch.setenv("NIM_OPERATOR_NAMESPACES", "models, team-*,")
    settings = Settings()
    assert settings.reconcile_interval == 5
    assert settings.namespace_patterns() == ["models", "team-*"]


def test_a_nonsense_interval_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIM_OPERATOR_RECONCILE_INTERVAL", "0")
    with pytest.raises(ValueError, match="reconcile_interval"):
        Settings()


def test_the_watch_timeout_is_whole_seconds_as_the_watch_url_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf puts it into the watch URL as `timeoutSeconds`, which kube-apiserver parses as an
    integer: "300.0" got 400 on every watch. A fractional value is refused at start."""
    assert Settings().watch_timeout == 300
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings, Settings())
    assert type(kopf_settings.watching.server_timeout) is int
    monkeypatch.setenv("NIM_OPERATOR_WATCH_TIMEOUT", "120.0")  # whole: taken as 120
    assert type(Settings().watch_timeout) is int
    monkeypatch.setenv("NIM_OPERATOR_WATCH_TIMEOUT", "90.5")
    with pytest.raises(ValueError, match="watch_timeout"):
        Settings()


def test_kopf_keeps_its_state_under_our_api_group() -> None:
    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings, Settings(watch_timeout=120))
    persistence = kopf_settings.persistence
    assert persistence.finalizer == FINALIZER == "nimstack.dev/finalizer"
    assert isinstance(persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert persistence.progress_storage.prefix == "nimstack.dev"
    assert isinstance(persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert persistence.diffbase_storage.prefix == "nimstack.dev"
    watching = kopf_settings.watching
    assert watching.server_timeout == 120
    assert watching.client_timeout is not None
    assert watching.client_timeout > watching.server_timeout
    selectors = {(s.group, s.plural or s.any_name): v for s, v in watching.label_selectors.items()}
    managed = "app.kubernetes.io/managed-by=nimstack-operator"
    assert selectors == {
        ("apps", "deployments"): managed,
        ("", "services"): managed,
        ("", "serviceaccounts"): managed,
        ("", "pods"): managed,
        ("batch", "jobs"): managed,  # NIMCache download Jobs
        ("leaderworkerset.x-k8s.io", "leaderworkersets"): managed,  # spec.multiNode
    }
    assert kopf_settings.posting.loggers is False  # Events only on condition transitions
    assert kopf_settings.posting.level == logging.INFO
    assert kopf_settings.peering.standalone is True
    # Idle per-object workers go sooner than kopf's default (bodies held at a restart's listing).
    default_idle = kopf.OperatorSettings().queueing.idle_timeout
    assert kopf_settings.queueing.idle_timeout == WORKER_IDLE_TIMEOUT < default_idle


def test_every_child_watch_is_filtered_by_the_api_server() -> None:
    """A child watch without a server-side selector would stream every such object in the
    cluster; the handlers' watches and the selectors are declared apart, so keep them in step."""
    import nim_operator.handlers  # noqa: F401  (registers the handlers)

    watched = {
        (h.selector.group, h.selector.plural or h.selector.any_name)
        for h in kopf.get_default_registry()._watching.get_all_handlers()
        if h.labels
    }
    filtered = {
        (v.partition("/")[0] if "/" in v else "", p)
        for v, p in (*WATCHED_CHILDREN, *WATCHED_CACHE_CHILDREN)
    }
    assert watched == filtered


@pytest.fixture
def emulated_kubeconfig(tmp_path: Path) -> Iterator[Path]:
    with EmulatedCluster(project_crds()) as cluster:
        yield cluster.write_kubeconfig(tmp_path / "kubeconfig")


def test_python_m_nim_operator_serves_liveness_and_stops_cleanly(
    emulated_kubeconfig: Path, tmp_path: Path
) -> None:
    process = OperatorProcess(emulated_kubeconfig, tmp_path / "operator.log")
    process.start()  # returns once the liveness endpoint answers 200
    with urllib.request.urlopen(process.liveness, timeout=5) as response:
        assert response.status == 200
    assert process.stop() == 0  # SIGTERM: kopf finishes its handlers and exits normally
    assert "Traceback" not in process.log_tail(lines=10_000)
