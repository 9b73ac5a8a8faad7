"""NIMServices NVIDIA's CRD accepts that ours used to refuse: they pass ours now, and render to
children that do what the fields say, the way NVIDIA's controller reads them.

Each spec goes through the same three gates a real one does: the CRD's structural schema (strict,
with defaults applied), its CEL rules (cel-python), and NIMServiceSpec.from_body, which folds
NVIDIA's older spellings and unused storage sources away (models_nvidia_shapes). The
children are then rendered with the pure renderers. Pure: no cluster.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nim_operator.exposure import GatewaySupport, exposure_report
from nim_operator.models import NIMServiceSpec
from nim_operator.models_nvidia_shapes import current_spec
from nim_operator.render import (
    Owner,
    render_deployment,
    render_grpc_route,
    render_hpa,
    render_http_route,
    render_ingress,
    render_leader_worker_set,
    render_pvc,
    render_service,
)
from nim_operator.render.probes import startup_budget_seconds
from tests.operator.test_crd_cel import apply_defaults, cel_violations, openapi_root
from tests.support.crd_validation import schema_errors

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")
IMAGE = {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.3.3"}
GATEWAY = {"namespace": "gw", "name": "public"}
AFFINITY_TERM = {
    "labelSelector": {"matchLabels": {"app": "cache-warmer"}},
    "topologyKey": "kubernetes.io/hostname",
}


def admitted(**fields: Any) -> NIMServiceSpec:
    """The spec as the operator sees it, after checking the API server would store it."""
    obj = {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": OWNER.name},
        "spec": {"image": IMAGE, **fields},
    }
    stored = apply_defaults(openapi_root(), copy.deepcopy(obj))
    assert schema_errors(openapi_root(), stored, strict=True) == []
    assert cel_violations(obj) == []
    return NIMServiceSpec.from_body(stored["spec"])


def pod(spec: NIMServiceSpec) -> dict[str, Any]:
    pod_spec: dict[str, Any] = render_deployment(OWNER, spec, replicas=1)["spec"]["template"][
        "spec"
    ]
    return pod_spec


def model_store(spec: NIMServiceSpec) -> dict[str, Any]:
    volumes = pod(spec)["volumes"]
    found: dict[str, Any] = next(v for v in volumes if v["name"] == "model-store")
    return found


def server(spec: NIMServiceSpec) -> dict[str, Any]:
    container: dict[str, Any] = pod(spec)["containers"][0]
    return container


class TestPodAffinity:
    """#1: NVIDIA's deprecated spec.podAffinity is the pod's affinity.podAffinity."""

    def test_alone_it_is_the_pods_pod_affinity(self) -> None:
        spec = admitted(
            podAffinity={"requiredDuringSchedulingIgnoredDuringExecution": [AFFINITY_TERM]}
        )
        assert pod(spec)["affinity"] == {
            "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [AFFINITY_TERM]}
        }

    def test_it_joins_the_rest_of_affinity(self) -> None:
        node: dict[str, Any] = {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
                ]
            }
        }
        spec = admitted(
            affinity={"nodeAffinity": node},
            podAffinity={"requiredDuringSchedulingIgnoredDuringExecution": [AFFINITY_TERM]},
        )
        affinity = pod(spec)["affinity"]
        assert affinity["nodeAffinity"] == node
        assert affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == [
            AFFINITY_TERM
        ]

    def test_affinity_pod_affinity_wins(self) -> None:
        """NVIDIA's operator reads only affinity: its podAffinity is the one used."""
        kept: dict[str, Any] = {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "podAffinityTerm": AFFINITY_TERM}
            ]
        }
        spec = admitted(
            affinity={"podAffinity": kept},
            podAffinity={"requiredDuringSchedulingIgnoredDuringExecution": [AFFINITY_TERM]},
        )
        assert pod(spec)["affinity"] == {"podAffinity": kept}


class TestStoragePrecedence:
    """#11: any combination passes; NVIDIA's order picks nimCache, pvc, emptyDir, hostPath."""

    def test_a_named_nimcache_wins_and_no_claim_is_made(self) -> None:
        spec = admitted(
            storage={
                "nimCache": {"name": "llama-cache"},
                "pvc": {"create": True, "size": "50Gi"},
                "hostPath": "/models",
            }
        )
        assert spec.storage.nim_cache is not None
        assert spec.storage.nim_cache.name == "llama-cache"
        assert (spec.storage.pvc, spec.storage.empty_dir, spec.storage.host_path) == (None,) * 3
        assert render_pvc(OWNER, spec) is None

    def test_a_nimcache_without_a_name_is_no_source(self) -> None:
        spec = admitted(
            storage={
                "nimCache": {"profile": "vllm-bf16-tp1"},
                "pvc": {"create": True, "size": "1Gi"},
            }
        )
        assert spec.storage.nim_cache is None
        assert model_store(spec)["persistentVolumeClaim"]["claimName"] == "llama-pvc"
        pvc = render_pvc(OWNER, spec)
        assert pvc is not None
        assert pvc["metadata"]["name"] == "llama-pvc"

    def test_a_claim_wins_over_an_empty_dir_and_a_host_path(self) -> None:
        spec = admitted(storage={"pvc": {"name": "models"}, "emptyDir": {}, "hostPath": "/m"})
        assert model_store(spec)["persistentVolumeClaim"] == {"claimName": "models"}

    def test_a_pvc_neither_named_nor_created_falls_through_to_the_empty_dir(self) -> None:
        spec = admitted(storage={"pvc": {"size": "10Gi"}, "emptyDir": {"sizeLimit": "20Gi"}})
        assert model_store(spec)["emptyDir"] == {"sizeLimit": "20Gi"}
        assert render_pvc(OWNER, spec) is None

    def test_an_empty_dir_wins_over_a_host_path(self) -> None:
        spec = admitted(storage={"emptyDir": {}, "hostPath": "/models"})
        assert model_store(spec)["emptyDir"] == {}

    def test_an_empty_host_path_is_no_path(self) -> None:
        spec = admitted(storage={"hostPath": "", "pvc": {"name": "models"}})
        assert model_store(spec)["persistentVolumeClaim"] == {"claimName": "models"}


class TestOlderSpellings:
    """#12 and #28: spec.router, spec.nimCache, expose.service.openaiPort render as the current
    fields do."""

    @pytest.mark.parametrize(
        "router",
        [
            {"hostDomainName": "example.com", "ingress": {"ingressClass": "nginx"}},
            {"hostDomainName": "example.com", "annotations": {"a": "b"}, "gateway": GATEWAY},
        ],
    )
    def test_spec_router_renders_as_expose_router(self, router: dict[str, Any]) -> None:
        old, new = admitted(router=router), admitted(expose={"router": router})
        for render in (render_ingress, render_http_route):
            assert render(OWNER, old) == render(OWNER, new)
        assert render_ingress(OWNER, old) or render_http_route(OWNER, old)

    def test_spec_nim_cache_is_storage_nim_cache(self) -> None:
        ref = {"name": "llama-cache", "profile": "vllm-bf16-tp1"}
        old = admitted(nimCache=ref)
        assert old == admitted(storage={"nimCache": ref})
        assert old.storage.nim_cache is not None
        assert old.storage.nim_cache.profile == "vllm-bf16-tp1"

    def test_both_spellings_the_same_pass(self) -> None:
        ref = {"name": "llama-cache"}
        assert admitted(nimCache=ref, storage={"nimCache": ref}).storage.nim_cache is not None
        assert (
            admitted(expose={"service": {"openaiPort": 9000, "port": 9000}}).service_port() == 9000
        )

    def test_openai_port_is_the_api_port(self) -> None:
        old = admitted(expose={"service": {"openaiPort": 9000}})
        new = admitted(expose={"service": {"port": 9000}})
        assert render_service(OWNER, old) == render_service(OWNER, new)
        assert render_service(OWNER, old)["spec"]["ports"][0]["port"] == 9000

    def test_the_fold_leaves_its_input_alone(self) -> None:
        stored = {"image": IMAGE, "podAffinity": {"x": 1}, "router": {}, "nimCache": {"name": "c"}}
        before = copy.deepcopy(stored)
        current_spec(stored)
        assert stored == before


class TestRelaxedRules:
    def test_grpc_routes_without_a_grpc_port_make_no_grpc_route_and_say_so(self) -> None:
        """#19: as NVIDIA, accepted; it renders a GRPCRoute with no rules, we render none."""
        gateway = {**GATEWAY, "grpcRoutesEnabled": True}
        spec = admitted(expose={"router": {"hostDomainName": "example.com", "gateway": gateway}})
        assert render_grpc_route(OWNER, spec) is None
        assert render_http_route(OWNER, spec) is not None
        report = exposure_report(OWNER, spec, GatewaySupport(http_routes=True, grpc_routes=True))
        assert report is not None
        assert (report.status, report.reason) == ("False", "GRPCPortMissing")
        assert "expose.service.grpcPort" in report.message
        assert "HTTPRoute llama on Gateway gw/public" in report.message

    def test_large_parallelism_and_a_zero_start_timeout(self) -> None:
        """#22: no cap on the sizes; mpiStartTimeout 0 is NVIDIA's default of 300 s."""
        spec = admitted(
            multiNode={"parallelism": {"tensor": 72, "pipeline": 80}, "mpi": {"mpiStartTimeout": 0}}
        )
        lws = render_leader_worker_set(OWNER, spec, replicas=1)
        assert lws is not None
        assert lws["spec"]["leaderWorkerTemplate"]["size"] == 80
        leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in leader["env"]}
        assert env["CLUSTER_START_TIMEOUT"] == "300"
        assert leader["resources"]["limits"]["nvidia.com/gpu"] == 72

    @pytest.mark.parametrize("name", ["1ST_VAR", "my var", "a.b-c:d", "~!@#$%^&*()"])
    def test_env_names_kubernetes_1_34_allows(self, name: str) -> None:
        """#25: any printable ASCII but '='."""
        spec = admitted(env=[{"name": name, "value": "1"}])
        assert {"name": name, "value": "1"} in server(spec)["env"]

    def test_probe_timings_of_zero_are_kubernetes_defaults(self) -> None:
        """#26: 0 passes and is left out of the pod, so the API server's default applies (and
        the applied object matches the stored one)."""
        probe = {
            "httpGet": {"path": "/v1/health/ready", "port": "api"},
            "initialDelaySeconds": 0,
            "timeoutSeconds": 0,
            "periodSeconds": 0,
            "successThreshold": 0,
            "failureThreshold": 0,
        }
        spec = admitted(startupProbe={"probe": probe}, livenessProbe={"probe": probe})
        rendered = server(spec)
        for key in ("startupProbe", "livenessProbe"):
            assert rendered[key] == {
                "httpGet": {"path": "/v1/health/ready", "port": "api"},
                "initialDelaySeconds": 0,
            }
        # Kubernetes' defaults: period 10 s, failure threshold 3.
        assert startup_budget_seconds(spec) == 30


class TestPassedThrough:
    def test_env_file_key_ref(self) -> None:
        """#23: Kubernetes 1.34's env-file source, to the server and to extra containers."""
        source = {"fileKeyRef": {"volumeName": "cfg", "path": "app.env", "key": "MODE"}}
        image = {"repository": "busybox", "tag": "1.36"}
        spec = admitted(
            env=[{"name": "MODE", "valueFrom": source}],
            sidecarContainers=[
                {"name": "agent", "image": image, "env": [{"name": "MODE", "valueFrom": source}]}
            ],
        )
        containers = pod(spec)["containers"]
        assert {"name": "MODE", "valueFrom": source} in containers[0]["env"]
        assert {"name": "MODE", "valueFrom": source} in containers[1]["env"]

    def test_hpa_tolerance(self) -> None:
        """#24: behavior.scaleUp/scaleDown.tolerance (Kubernetes 1.33+) reach the HPA."""
        behavior = {"scaleUp": {"tolerance": "0.05"}, "scaleDown": {"tolerance": "50m"}}
        spec = admitted(scale={"enabled": True, "hpa": {"maxReplicas": 3, "behavior": behavior}})
        hpa = render_hpa(OWNER, spec)
        assert hpa is not None
        assert hpa["spec"]["behavior"] == behavior
