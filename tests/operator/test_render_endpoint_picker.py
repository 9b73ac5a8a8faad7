"""expose.router.eppConfig: the InferencePool and the endpoint picker's children, rendered.

Checked against what the Gateway API Inference Extension expects of them: the pool selects the
server's pods (never the picker's) on the server's port and points at the picker's ext-proc
Service port; the picker reads its own configuration and pool; the picker's pod passes the
restricted Pod Security Standard; its Role reads only, and grants nothing the operator's
ClusterRole does not hold (Kubernetes refuses such a Role).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_children
from nim_operator.render.endpoint_picker import (
    EPP_ROLE_RULES,
    endpoint_picker_children,
    render_epp_config_map,
    render_epp_deployment,
    render_epp_role,
    render_epp_role_binding,
    render_epp_service,
)
from nim_operator.render.inference_pool import render_inference_pool
from tests.support.kmock_rbac import bound_permissions, granted_permissions
from tests.support.pod_security import restricted_violations

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000002")
RBAC = Path(__file__).resolve().parents[2] / "manifests" / "rbac.yaml"
EPP_IMAGE = {"repository": "registry.k8s.io/gateway-api-inference-extension/epp", "tag": "v1.3.1"}
PLUGINS = {
    "plugins": [{"type": "kv-cache-utilization-scorer"}],
    "schedulingProfiles": [
        {"name": "default", "plugins": [{"pluginRef": "kv-cache-utilization-scorer"}]}
    ],
}


def epp(**fields: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"containerSpec": {"name": "epp", "image": EPP_IMAGE}}
    if "configMapRef" not in fields:
        config["config"] = PLUGINS
    return {**config, **fields}


def make_spec(epp_config: dict[str, Any] | None = None, **extra: Any) -> NIMServiceSpec:
    router: dict[str, Any] = {"hostDomainName": "example.com"}
    if epp_config is not None:
        router["eppConfig"] = epp_config
    body = {"image": {"repository": "nim", "tag": "1"}, "expose": {"router": router}, **extra}
    return NIMServiceSpec.model_validate(body)


def rendered(spec: NIMServiceSpec, *, pools: bool = True) -> dict[tuple[str, str], Any]:
    children = render_children(
        OWNER, spec, replicas=2, service_monitor_supported=False, inference_pools_supported=pools
    )
    return {(ref.kind, ref.name): manifest for ref, manifest in children}


class TestSwitchedOff:
    def test_nothing_without_epp_config(self) -> None:
        spec = make_spec()
        assert render_inference_pool(OWNER, spec) is None
        children = endpoint_picker_children(OWNER, spec, inference_pools_supported=True)
        assert [ref.kind for ref, _ in children] == [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Service",
            "Deployment",
        ]
        # Listed with None: reconcile deletes any left from when eppConfig was set.
        assert all(manifest is None for _, manifest in children)
        assert rendered(spec)[("InferencePool", "llama")] is None

    def test_without_the_inference_pool_api_no_picker_runs(self) -> None:
        children = rendered(make_spec(epp()), pools=False)
        assert ("InferencePool", "llama") not in children  # nothing to delete: none can exist
        assert children[("Deployment", "llama-epp")] is None
        assert children[("Role", "llama-epp")] is None
        assert children[("Deployment", "llama")] is not None  # the server runs regardless


class TestInferencePool:
    def test_selects_the_server_pods_on_the_server_port_and_names_the_picker(self) -> None:
        children = rendered(make_spec(epp()))
        pool = children[("InferencePool", "llama")]
        assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
        server = children[("Deployment", "llama")]["spec"]["template"]
        picker = children[("Deployment", "llama-epp")]["spec"]["template"]
        selector = pool["spec"]["selector"]["matchLabels"].items()
        assert selector <= server["metadata"]["labels"].items()
        assert not selector <= picker["metadata"]["labels"].items()
        (nim,) = [c for c in server["spec"]["containers"] if c["name"] == "nim"]
        assert pool["spec"]["targetPorts"] == [{"number": nim["ports"][0]["containerPort"]}]
        ref = pool["spec"]["endpointPickerRef"]
        service = children[("Service", "llama-epp")]
        assert (ref["kind"], ref["name"]) == ("Service", service["metadata"]["name"])
        grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert ref["port"] == {"number": grpc["port"]} == {"number": 9002}
        assert grpc.get("appProtocol") == "http2"

    def test_multi_node_pools_only_the_leaders(self) -> None:
        spec = make_spec(epp(), gpu=None, multiNode={"parallelism": {"pipeline": 2}})
        pool = render_inference_pool(OWNER, spec)
        assert pool is not None
        assert pool["spec"]["selector"]["matchLabels"]["nim-llm-role"] == "leader"

    def test_user_ports_the_one_named_grpc_is_ext_proc(self) -> None:
        ports = [
            {"name": "metrics", "containerPort": 9090},
            {"name": "grpc", "containerPort": 9100},
            {"name": "grpc-health", "containerPort": 9101},
        ]
        pool = render_inference_pool(OWNER, make_spec(epp(ports=ports)))
        assert pool is not None
        assert pool["spec"]["endpointPickerRef"]["port"] == {"number": 9100}
        service = render_epp_service(OWNER, make_spec(epp(ports=ports)))
        assert service is not None
        assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [
            ("metrics", 9090),
            ("grpc", 9100),
            ("grpc-health", 9101),
        ]


class TestPicker:
    def test_deployment_runs_the_picker_for_this_pool_with_the_inline_config(self) -> None:
        spec = make_spec(epp())
        deployment = render_epp_deployment(OWNER, spec)
        config_map = render_epp_config_map(OWNER, spec)
        assert deployment is not None
        assert config_map is not None
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "registry.k8s.io/gateway-api-inference-extension/epp:v1.3.1"
        args = container["args"]
        assert args[args.index("--pool-name") + 1] == "llama"
        assert args[args.index("--pool-namespace") + 1] == "models"
        config_file = args[args.index("--config-file") + 1]
        (mount,) = container["volumeMounts"]
        (volume,) = pod["volumes"]
        assert volume["configMap"]["name"] == config_map["metadata"]["name"] == "llama-epp-config"
        key = config_file.removeprefix(mount["mountPath"] + "/")
        config = yaml.safe_load(config_map["data"][key])
        assert config["kind"] == "EndpointPickerConfig"
        assert config["apiVersion"] == "inference.networking.x-k8s.io/v1alpha1"
        assert {k: config[k] for k in PLUGINS} == PLUGINS
        assert pod["serviceAccountName"] == "llama-epp"
        assert pod["automountServiceAccountToken"] is True  # it watches the API
        # The default health checks are the picker's gRPC health service.
        assert container["readinessProbe"]["grpc"] == {
            "port": 9003,
            "service": "inference-extension",
        }

    def test_a_config_change_rolls_the_picker(self) -> None:
        one = render_epp_deployment(OWNER, make_spec(epp()))
        other = render_epp_deployment(OWNER, make_spec(epp(config={"plugins": []})))
        assert one is not None
        assert other is not None
        assert one["spec"]["template"] != other["spec"]["template"]

    def test_config_map_ref_mounts_the_users_config_map(self) -> None:
        ref = {"name": "my-epp-config", "key": "epp.yaml"}
        spec = make_spec(epp(configMapRef=ref))
        assert render_epp_config_map(OWNER, spec) is None
        deployment = render_epp_deployment(OWNER, spec)
        assert deployment is not None
        pod = deployment["spec"]["template"]["spec"]
        assert pod["volumes"] == [
            {
                "name": "config",
                "configMap": {
                    "name": "my-epp-config",
                    "items": [{"key": "epp.yaml", "path": "epp.yaml"}],
                },
            }
        ]
        args = pod["containers"][0]["args"]
        assert args[args.index("--config-file") + 1] == "/config/epp.yaml"

    def test_user_probes_args_and_env_are_kept(self) -> None:
        probe = {"httpGet": {"port": 9090, "path": "/metrics"}, "periodSeconds": 30}
        container_spec = {
            "name": "picker",
            "image": EPP_IMAGE,
            "args": ["--v", "4"],
            "env": [{"name": "LOG_LEVEL", "value": "debug"}],
        }
        spec = make_spec(epp(containerSpec=container_spec, livenessProbe=probe, startupProbe=probe))
        deployment = render_epp_deployment(OWNER, spec)
        assert deployment is not None
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["name"] == "picker"
        assert container["args"][-2:] == ["--v", "4"]
        assert container["env"][-1] == {"name": "LOG_LEVEL", "value": "debug"}
        assert container["env"][0]["name"] == "NAMESPACE"
        assert container["livenessProbe"] == probe == container["startupProbe"]
        assert "grpc" in container["readinessProbe"]

    def test_the_picker_pod_is_restricted(self) -> None:
        deployment = render_epp_deployment(OWNER, make_spec(epp()))
        assert deployment is not None
        template = deployment["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        assert restricted_violations(template["spec"], annotations) == []

    def test_the_role_reads_only_and_is_bound_to_the_picker_alone(self) -> None:
        spec = make_spec(epp())
        role = render_epp_role(OWNER, spec)
        binding = render_epp_role_binding(OWNER, spec)
        assert role is not None
        assert binding is not None
        verbs = {verb for rule in role["rules"] for verb in rule["verbs"]}
        assert verbs == {"get", "list", "watch"}
        assert "*" not in json.dumps(role["rules"])
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "llama-epp", "namespace": "models"}
        ]

    def test_the_operator_holds_what_the_role_grants(self) -> None:
        documents = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
        operator = bound_permissions(
            documents, namespace="nimstack-system", service_account="nim-operator"
        )
        assert granted_permissions(EPP_ROLE_RULES) <= operator

    @pytest.mark.parametrize("source", ["config", "configMapRef"])
    def test_built_in_kinds_validate_against_kubernetes(self, source: str) -> None:
        ref = {"name": "mine", "key": "c.yaml", "optional": False}
        spec = make_spec(epp(configMapRef=ref) if source == "configMapRef" else epp())
        for _, manifest in endpoint_picker_children(OWNER, spec, inference_pools_supported=True):
            if manifest is not None:
                kubernetes_validate.validate(manifest, "1.31", strict=True)


class TestSpec:
    def test_needs_exactly_one_config_source(self) -> None:
        with pytest.raises(ValidationError, match="exactly one of configMapRef and config"):
            make_spec({"containerSpec": {"name": "epp", "image": EPP_IMAGE}})
        with pytest.raises(ValidationError, match="exactly one of configMapRef and config"):
            make_spec(epp(configMapRef={"name": "c", "key": "k"}, config=PLUGINS))

    def test_host_ports_are_refused(self) -> None:
        with pytest.raises(ValidationError, match="hostPort is not allowed"):
            make_spec(epp(ports=[{"containerPort": 9002, "hostPort": 9002}]))
