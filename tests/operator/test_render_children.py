"""render_children: every child in apply order, valid for Kubernetes, the same every time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from nim_operator import API_GROUP, API_VERSION, KIND
from nim_operator.models import NIMServiceSpec
from nim_operator.render import FIELD_MANAGER, ChildRef, Owner, render_children

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")
SAMPLES = sorted((Path(__file__).parents[2] / "manifests" / "samples").glob("*.yaml"))
IMAGE = {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.3.3"}
APPLY_ORDER = [
    "ServiceAccount",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "Ingress",
    "HTTPRoute",
    "GRPCRoute",
    # expose.router.eppConfig: the endpoint picker's children, then the InferencePool.
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "Service",
    "Deployment",
    "InferencePool",
    "ServiceMonitor",
]
# Kinds kubernetes_validate has no schema for: they come with CRDs.
CUSTOM_KINDS = {"ServiceMonitor", "HTTPRoute", "GRPCRoute", "InferencePool"}
# The endpoint picker's children (expose.router.eppConfig) are named after the NIMService.
EPP_PREFIX = "llama-epp"
SPECS: dict[str, dict[str, Any]] = {
    "minimal": {"image": IMAGE},
    "cpu only": {"image": IMAGE, "gpu": {"count": 0}, "storage": {"emptyDir": {}}},
    "everything": {
        "image": {**IMAGE, "pullPolicy": "IfNotPresent", "pullSecrets": ["ngc"]},
        "authSecret": "ngc-api",
        "model": {"name": "meta/llama-3.1-8b-instruct", "servedName": "llama", "maxModelLen": 8192},
        "gpu": {"count": 2},
        "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "80Gi"}},
        "env": [{"name": "NIM_LOG_LEVEL", "value": "DEBUG"}],
        "storage": {
            "pvc": {
                "create": True,
                "size": "100Gi",
                "storageClass": "standard",
                "retainPolicy": "Delete",
                "subPath": "llama",
                "annotations": {"a": "b"},
            },
            "sharedMemorySizeLimit": "16Gi",
        },
        "expose": {
            "service": {
                "type": "NodePort",
                "port": 8080,
                "grpcPort": 8001,
                "metricsPort": 8002,
                "labels": {"x": "y"},
            },
            "ingress": {
                "enabled": True,
                "spec": {
                    "ingressClassName": "nginx",
                    "rules": [
                        {
                            "host": "llm.example.com",
                            "http": {"paths": [{"path": "/", "pathType": "Prefix"}]},
                        }
                    ],
                },
            },
            "router": {
                "hostDomainName": "example.com",
                "gateway": {"namespace": "gw", "name": "public", "grpcRoutesEnabled": True},
                "eppConfig": {
                    "containerSpec": {
                        "name": "epp",
                        "image": {"repository": "registry.k8s.io/epp", "tag": "v1.3.1"},
                    },
                    "config": {"plugins": [{"type": "kv-cache-utilization-scorer"}]},
                },
            },
        },
        "scale": {
            "enabled": True,
            "hpa": {
                "minReplicas": 2,
                "maxReplicas": 6,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70},
                        },
                    }
                ],
                "behavior": {
                    "scaleUp": {
                        "selectPolicy": "Max",
                        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                    }
                },
            },
        },
        "metrics": {"enabled": True, "serviceMonitor": {"interval": "30s"}},
        "labels": {"team": "ml"},
        "annotations": {"owner": "ml"},
        "nodeSelector": {"gpu": "h100"},
        "tolerations": [
            {"key": "g", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 1}
        ],
        "affinity": {
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
            "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
        },
        "runtimeClassName": "nvidia",
        "priorityClassName": "high",
        "schedulerName": "default-scheduler",
        "shutdownTimeoutSeconds": 90,
    },
    "many replicas": {"image": IMAGE, "replicas": 3, "storage": {"pvc": {"name": "shared"}}},
    "scaled to zero": {"image": IMAGE, "replicas": 0, "storage": {"hostPath": "/models"}},
}


def children(
    body: dict[str, Any], *, supported: bool = True
) -> list[tuple[ChildRef, dict[str, Any] | None]]:
    spec = NIMServiceSpec.model_validate(body)
    return render_children(
        OWNER,
        spec,
        replicas=spec.desired_replicas(),
        service_monitor_supported=supported,
        http_routes_supported=supported,
        grpc_routes_supported=supported,
        inference_pools_supported=supported,
    )


def all_specs() -> dict[str, dict[str, Any]]:
    samples = {path.name: yaml.safe_load(path.read_text())["spec"] for path in SAMPLES}
    return {**SPECS, **samples}


class TestRenderChildren:
    def test_apply_order_and_identity(self) -> None:
        rendered = children(SPECS["everything"])
        assert [ref.kind for ref, _ in rendered] == APPLY_ORDER
        for ref, manifest in rendered:
            assert manifest is not None
            assert (manifest["apiVersion"], manifest["kind"]) == (ref.api_version, ref.kind)
            assert manifest["metadata"]["name"] == ref.name
            assert manifest["metadata"]["namespace"] == "models"
            assert manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"] == FIELD_MANAGER

    def test_owner_references(self) -> None:
        for _, manifest in children(SPECS["everything"]):
            assert manifest is not None
            assert manifest["metadata"]["ownerReferences"] == [
                {
                    "apiVersion": f"{API_GROUP}/{API_VERSION}",
                    "kind": KIND,
                    "name": "llama",
                    "uid": OWNER.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]

    def test_disabled_features_render_as_none(self) -> None:
        everything = children(SPECS["minimal"])
        picker = [m for ref, m in everything if ref.name.startswith(EPP_PREFIX)]
        assert len(picker) == 6
        assert all(m is None for m in picker)  # no eppConfig: the picker's children go
        rendered = {
            ref.kind: (ref, manifest)
            for ref, manifest in everything
            if not ref.name.startswith(EPP_PREFIX)
        }
        assert [kind for kind, (_, m) in rendered.items() if m is None] == [
            "PersistentVolumeClaim",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Ingress",
            "HTTPRoute",
            "GRPCRoute",
            "InferencePool",
            "ServiceMonitor",
        ]
        pvc_ref, _ = rendered["PersistentVolumeClaim"]
        assert pvc_ref.name == "llama-pvc"

    def test_no_service_monitor_entry_without_its_crd(self) -> None:
        kinds = [ref.kind for ref, _ in children(SPECS["everything"], supported=False)]
        assert "ServiceMonitor" not in kinds

    def test_no_route_entries_without_the_gateway_api(self) -> None:
        kinds = [ref.kind for ref, _ in children(SPECS["everything"], supported=False)]
        assert "HTTPRoute" not in kinds
        assert "GRPCRoute" not in kinds
        assert "Ingress" in kinds  # a built-in kind, always there to apply or delete

    def test_a_renamed_service_deletes_the_one_under_the_nimservice_name(self) -> None:
        body = {"image": IMAGE, "expose": {"service": {"name": "llama-api"}}}
        services = [
            (ref.name, m is not None)
            for ref, m in children(body)
            if ref.kind == "Service" and not ref.name.startswith(EPP_PREFIX)
        ]
        assert services == [("llama-api", True), ("llama", False)]

    def test_a_service_under_the_name_the_status_reported_is_deleted(self) -> None:
        spec = NIMServiceSpec.model_validate({"image": IMAGE})
        rendered = render_children(
            OWNER, spec, replicas=1, service_monitor_supported=False, previous_service="old-api"
        )
        services = [
            (ref.name, m is not None)
            for ref, m in rendered
            if ref.kind == "Service" and not ref.name.startswith(EPP_PREFIX)
        ]
        assert services == [("llama", True), ("old-api", False)]

    def test_an_existing_claim_under_the_default_name_is_left_alone(self) -> None:
        body = {"image": IMAGE, "storage": {"pvc": {"name": "llama-pvc"}}}
        assert "PersistentVolumeClaim" not in [ref.kind for ref, _ in children(body)]

    def test_replicas_none_leaves_the_deployment_to_the_hpa(self) -> None:
        rendered = {(ref.kind, ref.name): m for ref, m in children(SPECS["everything"])}
        deployment = rendered["Deployment", "llama"]
        assert deployment is not None
        assert "replicas" not in deployment["spec"]

    @pytest.mark.parametrize("body", all_specs().values(), ids=all_specs().keys())
    def test_built_in_kinds_validate_against_kubernetes(self, body: dict[str, Any]) -> None:
        for ref, manifest in children(body):
            if manifest is None or ref.kind in CUSTOM_KINDS:  # not a built-in kind
                continue
            kubernetes_validate.validate(manifest, "1.31", strict=True)

    @pytest.mark.parametrize("body", all_specs().values(), ids=all_specs().keys())
    def test_deterministic(self, body: dict[str, Any]) -> None:
        first = json.dumps([(ref.name, m) for ref, m in children(body)])
        # Same spec, maps written in another order: byte-identical output.
        reordered = json.loads(json.dumps(body), object_pairs_hook=lambda p: dict(reversed(p)))
        assert json.dumps([(ref.name, m) for ref, m in children(reordered)]) == first
        assert json.dumps([(ref.name, m) for ref, m in children(body)]) == first
