"""GatewayRouted, from what a gateway Deployment says (nim_operator.gateway_status), as units.

The Deployments are the shipped one (manifests/gateway, built with kustomize) and variations a
user could make of it; the end-to-end test with the real operator is test_gateway_status_e2e.py.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nim_operator.gateway_status import (
    GatewayListing,
    GatewayView,
    gateway_view,
    routed_report,
)
from tests.support.gateway_install import build_with_gateway


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    (deployment,) = [
        d
        for d in build_with_gateway()
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "nim-gateway"
    ]
    return deployment


def variant(shipped: dict[str, Any], *, ready: int = 0, **container: Any) -> dict[str, Any]:
    deployment = copy.deepcopy(shipped)
    (gateway,) = deployment["spec"]["template"]["spec"]["containers"]
    gateway.update(container)
    if ready:
        deployment["status"] = {"replicas": 2, "readyReplicas": ready}
    return deployment


def env(**values: str) -> list[dict[str, Any]]:
    return [{"name": name, "value": value} for name, value in values.items()]


class TestGatewayView:
    def test_the_shipped_gateway_watches_every_namespace(self, shipped: dict[str, Any]) -> None:
        view = gateway_view(shipped)
        assert view == GatewayView("nimstack-system", "nim-gateway", 0, None)
        assert view.watches("anything")
        assert str(view) == "nim-gateway nimstack-system/nim-gateway"

    def test_namespaces_from_the_environment(self, shipped: dict[str, Any]) -> None:
        view = gateway_view(variant(shipped, env=env(NIM_GATEWAY_NAMESPACES=" a, b ,")))
        assert view.namespaces == frozenset({"a", "b"})
        assert view.watches("a")
        assert not view.watches("c")

    @pytest.mark.parametrize(
        "args", [["--namespaces", "a"], ["--namespaces=a"], ["--namespaces=x", "--namespaces=a"]]
    )
    def test_the_command_line_overrides_the_environment(
        self, shipped: dict[str, Any], args: list[str]
    ) -> None:
        view = gateway_view(variant(shipped, args=args, env=env(NIM_GATEWAY_NAMESPACES="b")))
        assert view.namespaces == frozenset({"a"})

    @pytest.mark.parametrize(
        "container",
        [
            {"args": ["--backend", "http://10.0.0.1:8000"]},
            {"args": ["--backends-file=/etc/backends.yaml"]},
            {"env": env(NIM_GATEWAY_BACKENDS_FILE="/etc/backends.yaml")},
        ],
    )
    def test_a_static_backend_list_watches_no_namespace(
        self, shipped: dict[str, Any], container: dict[str, Any]
    ) -> None:
        view = gateway_view(variant(shipped, **container))
        assert view.static
        assert not view.watches("anything")

    def test_namespaces_the_deployment_cannot_tell(self, shipped: dict[str, Any]) -> None:
        from_config_map = {"configMapKeyRef": {"name": "gw", "key": "namespaces"}}
        view = gateway_view(
            variant(shipped, env=[{"name": "NIM_GATEWAY_NAMESPACES", "valueFrom": from_config_map}])
        )
        assert view.unreadable == "NIM_GATEWAY_NAMESPACES comes from valueFrom"
        assert not view.watches("anything")
        view = gateway_view(variant(shipped, env=[], envFrom=[{"configMapRef": {"name": "gw"}}]))
        assert view.unreadable == "NIM_GATEWAY_NAMESPACES may come from envFrom"
        # Set explicitly, the variable wins over envFrom (as the kubelet orders them).
        view = gateway_view(
            variant(
                shipped,
                env=env(NIM_GATEWAY_NAMESPACES="a"),
                envFrom=[{"configMapRef": {"name": "gw"}}],
            )
        )
        assert view.namespaces == frozenset({"a"})

    def test_ready_replicas_and_an_absent_status(self, shipped: dict[str, Any]) -> None:
        assert gateway_view(variant(shipped, ready=2)).ready_replicas == 2
        assert gateway_view({"metadata": {"name": "x"}}).ready_replicas == 0


def listing(*views: GatewayView) -> GatewayListing:
    return GatewayListing(tuple(views))


ALL = GatewayView("gw", "nim-gateway", 2, None)
TEAM_A = GatewayView("gw", "team-a-gateway", 1, frozenset({"team-a"}))


class TestRoutedReport:
    def test_no_gateway_no_condition(self) -> None:
        assert routed_report(listing(), "team-a", "m", 1) is None

    def test_routed(self) -> None:
        report = routed_report(listing(ALL, TEAM_A), "team-a", "meta/llama", 3)
        assert report is not None
        assert (report.type, report.status, report.reason) == ("GatewayRouted", "True", "Routed")
        assert report.message == (
            "nim-gateways gw/nim-gateway and gw/team-a-gateway route model meta/llama "
            "to 3 ready replicas"
        )
        one = routed_report(listing(TEAM_A), "team-a", "m", 1)
        assert one is not None
        assert one.message.endswith("to 1 ready replica")

    def test_no_ready_replica_of_the_nimservice(self) -> None:
        report = routed_report(listing(ALL), "team-a", "m", 0)
        assert report is not None
        assert (report.status, report.reason) == ("False", "NoReadyReplica")
        assert "answers 503" in report.message

    def test_a_service_that_scales_to_zero_is_woken_rather_than_refused(self) -> None:
        report = routed_report(listing(ALL), "team-a", "m", 0, wakes_from_zero=True)
        assert report is not None
        assert (report.status, report.reason) == ("True", "WakesOnRequest")
        assert "scale-from-zero" in report.message
        up = routed_report(listing(ALL), "team-a", "m", 2, wakes_from_zero=True)
        assert up is not None
        assert up.reason == "Routed"

    def test_the_gateway_watching_the_namespace_is_not_ready(self) -> None:
        starting = GatewayView("gw", "team-a-gateway", 0, frozenset({"team-a"}))
        report = routed_report(listing(starting), "team-a", "m", 1)
        assert report is not None
        assert (report.status, report.reason) == ("False", "GatewayNotReady")
        assert report.message == (
            "nim-gateway gw/team-a-gateway watches namespace team-a but has no ready replica"
        )

    def test_a_namespace_no_gateway_watches(self) -> None:
        static = GatewayView("gw", "static", 1, None, static=True)
        report = routed_report(listing(TEAM_A, static), "team-b", "m", 1)
        assert report is not None
        assert (report.status, report.reason) == ("False", "NamespaceNotWatched")
        assert report.message == (
            "no nim-gateway watches namespace team-b (nim-gateways gw/static and "
            "gw/team-a-gateway watch others or a static list; add it to NIM_GATEWAY_NAMESPACES)"
        )

    def test_unknown_when_a_gateways_namespaces_cannot_be_read(self) -> None:
        hidden = GatewayView("gw", "hidden", 1, None, unreadable="it comes from valueFrom")
        report = routed_report(listing(TEAM_A, hidden), "team-b", "m", 1)
        assert report is not None
        assert (report.status, report.reason) == ("Unknown", "GatewayNamespacesUnknown")
        # Another gateway that does watch the namespace settles it.
        settled = routed_report(listing(TEAM_A, hidden), "team-a", "m", 1)
        assert settled is not None
        assert settled.status == "True"

    def test_a_failed_list_is_unknown(self) -> None:
        report = routed_report(GatewayListing(error="403 Forbidden"), "team-a", "m", 1)
        assert report is not None
        assert (report.status, report.reason) == ("Unknown", "GatewayLookupFailed")
        assert "403 Forbidden" in report.message
