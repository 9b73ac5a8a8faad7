"""The CRD's CEL rules, evaluated by a real CEL implementation, agree with the pydantic model.

The API server defaults an object, then runs every x-kubernetes-validations rule on the nodes
present. This does the same with cel-python: each invalid spec below must be rejected by the rule
with the expected message AND by NIMServiceSpec with the same message; the samples pass both.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import celpy  # type: ignore[import-untyped]
import pytest
import yaml
from pydantic import ValidationError

from nim_operator.models import NIMServiceSpec

REPO = Path(__file__).parents[2]
CRD_PATH = REPO / "crds" / "nimservice.yaml"
SAMPLES = sorted((REPO / "manifests" / "samples").glob("*.yaml"))
CEL = celpy.Environment()

# A NIMService as NVIDIA's documentation writes one, with apiVersion switched to ours.
NVIDIA_STYLE = {
    "apiVersion": "nimstack.dev/v1alpha1",
    "kind": "NIMService",
    "metadata": {"name": "meta-llama3-8b-instruct"},
    "spec": {
        "image": {
            "repository": "nvcr.io/nim/meta/llama3-8b-instruct",
            "tag": "1.0.3",
            "pullPolicy": "IfNotPresent",
            "pullSecrets": ["ngc-secret"],
        },
        "authSecret": "ngc-api-secret",
        "storage": {"pvc": {"create": True, "size": "50Gi", "volumeAccessMode": "ReadWriteMany"}},
        "replicas": 1,
        "resources": {"limits": {"nvidia.com/gpu": 1}},
        "expose": {"service": {"type": "ClusterIP", "port": 8000}},
        "tolerations": [
            {
                "key": "nvidia.com/gpu",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }
        ],
    },
}


@cache
def openapi_root() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    root: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


@cache
def compiled(rule: str) -> Any:
    return CEL.program(CEL.compile(rule))


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Structural defaulting, top-down, as the API server does before validating."""
    if isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
        if isinstance(node.get("additionalProperties"), dict):
            for key in value:
                value[key] = apply_defaults(node["additionalProperties"], value[key])
    if isinstance(value, list) and "items" in node:
        return [apply_defaults(node["items"], item) for item in value]
    return value


def rules(node: dict[str, Any], value: Any) -> Iterator[tuple[str, str, Any]]:
    """(rule, message, self) for every rule on a node the object has."""
    for validation in node.get("x-kubernetes-validations", []):
        yield validation["rule"], validation["message"], value
    if isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            if name in value:
                yield from rules(child, value[name])
        if isinstance(node.get("additionalProperties"), dict):
            for item in value.values():
                yield from rules(node["additionalProperties"], item)
    if isinstance(value, list) and "items" in node:
        for item in value:
            yield from rules(node["items"], item)


def cel_violations(obj: dict[str, Any]) -> list[str]:
    defaulted = apply_defaults(openapi_root(), copy.deepcopy(obj))
    return [
        message
        for rule, message, value in rules(openapi_root(), defaulted)
        if not compiled(rule).evaluate({"self": celpy.json_to_cel(value)})
    ]


def nimservice(name: str = "llama", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": name},
        "spec": {"image": {"repository": "nvcr.io/nim/meta/llama", "tag": "1.3"}, **spec},
    }


INGRESS_BACKEND = {"service": {"name": "llama", "port": {"name": "api"}}}
# expose.router.eppConfig's container (NVIDIA's NIMContainerSpec).
EPP_CONTAINER = {"name": "epp", "image": {"repository": "epp", "tag": "1"}}
INVALID_SPECS = {
    "multiNode with an HPA": (
        {
            "multiNode": {"parallelism": {"tensor": 8, "pipeline": 2}},
            "scale": {"enabled": True, "hpa": {"maxReplicas": 2}},
        },
        "a multi-node group is scaled by spec.replicas only",
    ),
    "multiNode with the built-in autoscaler": (
        {"multiNode": {"parallelism": {"pipeline": 2}}, "autoscaling": {"maxReplicas": 2}},
        "a multi-node group is scaled by spec.replicas only",
    ),
    "multiNode with another GPU count": (
        {"multiNode": {"parallelism": {"tensor": 8}}, "gpu": {"count": 4}},
        "each pod has multiNode.parallelism.tensor GPUs",
    ),
    "multiNode's default tensor size with another GPU count": (
        {"multiNode": {"parallelism": {"pipeline": 2}}, "gpu": {"count": 0}},
        "each pod has multiNode.parallelism.tensor GPUs",
    ),
    "multiNode.computeDomain created and named": (
        {"multiNode": {"parallelism": {}, "computeDomain": {"create": True, "name": "rack-1"}}},
        "multiNode.computeDomain takes either create: true",
    ),
    "multiNode.computeDomain neither created nor named": (
        {"multiNode": {"parallelism": {}, "computeDomain": {"create": False}}},
        "multiNode.computeDomain takes either create: true",
    ),
    "multiNode.computeDomain empty": (
        {"multiNode": {"parallelism": {}, "computeDomain": {}}},
        "multiNode.computeDomain takes either create: true",
    ),
    "replicas with autoscaling": (
        {"replicas": 2, "scale": {"enabled": True, "hpa": {"maxReplicas": 3}}},
        "spec.replicas and spec.scale.enabled are mutually exclusive",
    ),
    "autoscaling without hpa": ({"scale": {"enabled": True}}, "scale.hpa (at least maxReplicas)"),
    "max below min": (
        {"scale": {"enabled": True, "hpa": {"minReplicas": 3, "maxReplicas": 2}}},
        "scale.hpa.maxReplicas must be >= scale.hpa.minReplicas",
    ),
    "replicas with the built-in autoscaler": (
        {"replicas": 2, "autoscaling": {"maxReplicas": 3}},
        "spec.replicas and spec.autoscaling are mutually exclusive",
    ),
    "built-in autoscaler and an HPA": (
        {"autoscaling": {"maxReplicas": 3}, "scale": {"enabled": True, "hpa": {"maxReplicas": 3}}},
        "spec.autoscaling and spec.scale.enabled are mutually exclusive",
    ),
    "built-in autoscaler max below min": (
        {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
        "autoscaling.maxReplicas must be >= autoscaling.minReplicas",
    ),
    "built-in autoscaler max below the default min": (
        {"autoscaling": {"minReplicas": 2, "maxReplicas": 1}},
        "autoscaling.maxReplicas must be >= autoscaling.minReplicas",
    ),
    "kvCache target as a percentage": (
        {"autoscaling": {"maxReplicas": 3, "metric": "kvCache", "target": 80.0}},
        "autoscaling.target for kvCache is the fraction of the KV cache in use",
    ),
    "pvc created without size": (
        {"storage": {"pvc": {"create": True}}},
        "storage.pvc.size is required when storage.pvc.create is true",
    ),
    "pvc neither named nor created": (
        {"storage": {"pvc": {"subPath": "models"}}},
        "storage.pvc needs either name (an existing claim) or create",
    ),
    "pvc created without size, an emptyDir after it": (
        # NVIDIA's order picks the claim to create before the emptyDir: it would have no size.
        {"storage": {"pvc": {"create": True}, "emptyDir": {}}},
        "storage.pvc.size is required when storage.pvc.create is true",
    ),
    "spec.nimCache and storage.nimCache differ": (
        {"nimCache": {"name": "llama"}, "storage": {"nimCache": {"name": "other"}}},
        "spec.nimCache (NVIDIA's earlier place for it) and spec.storage.nimCache differ",
    ),
    "spec.router and expose.router": (
        {
            "router": {"ingress": {"ingressClass": "nginx"}},
            "expose": {"router": {"ingress": {"ingressClass": "nginx"}}},
        },
        "spec.router (NVIDIA's earlier place for it) and spec.expose.router are the same setting",
    ),
    "spec.router.ingress and expose.ingress": (
        {
            "router": {"ingress": {"ingressClass": "nginx"}},
            "expose": {"ingress": {"enabled": True, "spec": {"defaultBackend": INGRESS_BACKEND}}},
        },
        "expose.ingress and spec.router.ingress both make the Ingress of this NIMService",
    ),
    "openaiPort and port differ": (
        {"expose": {"service": {"openaiPort": 9000, "port": 8000}}},
        "expose.service.openaiPort (NVIDIA's earlier name for the API port) and",
    ),
    "grpcPort on the openaiPort": (
        {"expose": {"service": {"openaiPort": 9000, "grpcPort": 9000}}},
        "expose.service port, grpcPort and metricsPort must all differ",
    ),
    "nimCache with model.name": (
        {"storage": {"nimCache": {"name": "llama"}}, "model": {"name": "org/other"}},
        "model.name and storage.nimCache are mutually exclusive",
    ),
    "gpu twice": (
        {"gpu": {"count": 1}, "resources": {"limits": {"nvidia.com/gpu": 1}}},
        "set the GPU count either in gpu.count or in resources",
    ),
    "literal API key": (
        {"env": [{"name": "NGC_API_KEY", "value": "nvapi-secret"}]},
        "NGC_API_KEY, HF_TOKEN and NIM_API_KEY must come from a Secret",
    ),
    "literal HF token": (
        {"env": [{"name": "HF_TOKEN", "value": "hf_secret"}]},
        "NGC_API_KEY, HF_TOKEN and NIM_API_KEY must come from a Secret",
    ),
    "probe without handler": (
        {"livenessProbe": {"probe": {"periodSeconds": 5}}},
        "a probe needs exactly one of exec, httpGet, tcpSocket, grpc",
    ),
    "probe with two handlers": (
        {"startupProbe": {"probe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": "api"}}}},
        "a probe needs exactly one of exec, httpGet, tcpSocket, grpc",
    ),
    "Exists toleration with a value": (
        {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "yes"}]},
        "a toleration with operator Exists must not have a value",
    ),
    "tolerationSeconds without NoExecute": (
        {"tolerations": [{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 5}]},
        "tolerationSeconds is only allowed with effect NoExecute",
    ),
    "toleration without key or Exists": (
        {"tolerations": [{"value": "x", "effect": "NoSchedule"}]},
        "a toleration without a key needs operator Exists",
    ),
    "router with ingress and gateway": (
        {
            "expose": {
                "router": {
                    "ingress": {"ingressClass": "nginx"},
                    "gateway": {"namespace": "gw", "name": "public"},
                }
            }
        },
        "expose.router: ingress and gateway cannot be specified together",
    ),
    "expose.ingress and router.ingress": (
        {
            "expose": {
                "ingress": {"enabled": True, "spec": {"defaultBackend": INGRESS_BACKEND}},
                "router": {"ingress": {"ingressClass": "nginx"}},
            }
        },
        "expose.ingress and expose.router.ingress both make the Ingress",
    ),
    "ingress enabled without rules": (
        {"expose": {"ingress": {"enabled": True, "spec": {"ingressClassName": "nginx"}}}},
        "expose.ingress.spec needs rules or a defaultBackend",
    ),
    "ingress backend with service and resource": (
        {
            "expose": {
                "ingress": {
                    "enabled": True,
                    "spec": {
                        "defaultBackend": {
                            **INGRESS_BACKEND,
                            "resource": {"kind": "Bucket", "name": "b"},
                        }
                    },
                }
            }
        },
        "an Ingress backend needs exactly one of service, resource",
    ),
    "ingress port by name and number": (
        {
            "expose": {
                "ingress": {
                    "enabled": True,
                    "spec": {
                        "defaultBackend": {
                            "service": {"name": "llama", "port": {"name": "api", "number": 80}}
                        }
                    },
                }
            }
        },
        "an Ingress service port needs exactly one of name, number",
    ),
    "sidecar named like the server": (
        {"sidecarContainers": [{"name": "nim", "image": {"repository": "busybox", "tag": "1"}}]},
        "initContainers and sidecarContainers need names unique across both lists",
    ),
    "init and sidecar with one name": (
        {
            "initContainers": [{"name": "prep", "image": {"repository": "busybox", "tag": "1"}}],
            "sidecarContainers": [{"name": "prep", "image": {"repository": "busybox", "tag": "1"}}],
        },
        "initContainers and sidecarContainers need names unique across both lists",
    ),
    "literal HF token in a sidecar": (
        {
            "sidecarContainers": [
                {
                    "name": "agent",
                    "image": {"repository": "busybox", "tag": "1"},
                    "env": [{"name": "HF_TOKEN", "value": "hf_x"}],
                }
            ]
        },
        "NGC_API_KEY, HF_TOKEN and NIM_API_KEY must come from a Secret",
    ),
    "type embedding": (
        {"type": "embedding"},
        "type embedding and reranking are not supported: this operator's server image",
    ),
    "type reranking": (
        {"type": "reranking"},
        "type embedding and reranking are not supported: this operator's server image",
    ),
    "inferencePlatform kserve": (
        {"inferencePlatform": "kserve"},
        "inferencePlatform kserve is not supported by this operator; use standalone",
    ),
    "gateway backendRef to a Service without a port": (
        {
            "expose": {
                "router": {
                    "gateway": {
                        "namespace": "gw",
                        "name": "public",
                        "backendRef": {"name": "other-service"},
                    }
                }
            }
        },
        "Must have port for Service reference",
    ),
    "eppConfig without configuration": (
        {"expose": {"router": {"eppConfig": {"containerSpec": EPP_CONTAINER}}}},
        "expose.router.eppConfig needs exactly one of configMapRef and config",
    ),
    "eppConfig with both configurations": (
        {
            "expose": {
                "router": {
                    "eppConfig": {
                        "containerSpec": EPP_CONTAINER,
                        "config": {"plugins": []},
                        "configMapRef": {"name": "epp", "key": "config.yaml"},
                    }
                }
            }
        },
        "expose.router.eppConfig needs exactly one of configMapRef and config",
    ),
    "eppConfig port on the host": (
        {
            "expose": {
                "router": {
                    "eppConfig": {
                        "containerSpec": EPP_CONTAINER,
                        "config": {},
                        "ports": [{"containerPort": 9002, "hostPort": 9002}],
                    }
                }
            }
        },
        "expose.router.eppConfig.ports[].hostPort is not allowed",
    ),
    "grpcPort on the API port": (
        {"expose": {"service": {"grpcPort": 8000}}},
        "expose.service port, grpcPort and metricsPort must all differ",
    ),
    "metricsPort on the grpcPort": (
        {"expose": {"service": {"grpcPort": 8001, "metricsPort": 8001}}},
        "expose.service port, grpcPort and metricsPort must all differ",
    ),
    "metric without its source": (
        {
            "scale": {
                "enabled": True,
                "hpa": {
                    "maxReplicas": 2,
                    "metrics": [
                        {
                            "type": "Pods",
                            "resource": {
                                "name": "cpu",
                                "target": {"type": "Utilization", "averageUtilization": 80},
                            },
                        }
                    ],
                },
            }
        },
        "a metric of a given type needs the source of that type set",
    ),
}


class TestRulesCompile:
    def test_every_rule_is_valid_cel(self) -> None:
        found = []
        stack = [openapi_root()]
        while stack:
            node = stack.pop()
            found += [v["rule"] for v in node.get("x-kubernetes-validations", [])]
            stack += list(node.get("properties", {}).values())
            stack += [node[key] for key in ("items", "additionalProperties") if key in node]
        assert len(found) >= len(INVALID_SPECS) - 3
        for rule in found:
            compiled(rule)


class TestValidObjects:
    @pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
    def test_samples_pass_cel_and_the_model(self, path: Path) -> None:
        sample = yaml.safe_load(path.read_text())
        assert cel_violations(sample) == []
        NIMServiceSpec.model_validate(sample["spec"])

    def test_standalone_inference_platform_passes(self) -> None:
        obj = nimservice(inferencePlatform="standalone")
        assert cel_violations(obj) == []
        assert NIMServiceSpec.from_body(obj["spec"]).inference_platform == "standalone"

    def test_llm_type_passes_and_is_the_default(self) -> None:
        """NVIDIA's early `type: llm` passes; unset, the API server stores llm (also fine)."""
        for obj in (nimservice(type="llm"), nimservice()):
            assert cel_violations(obj) == []
            stored = apply_defaults(openapi_root(), copy.deepcopy(obj))
            assert stored["spec"]["type"] == "llm"
            assert NIMServiceSpec.from_body(stored["spec"]).nim_type == "llm"

    def test_nvidia_proxy_section_passes(self) -> None:
        proxy = {
            "httpProxy": "http://proxy:3128",
            "httpsProxy": "http://proxy:3128",
            "noProxy": "localhost,.svc",
            "certConfigMap": "corp-ca",
        }
        obj = nimservice(proxy=proxy)
        assert cel_violations(obj) == []
        spec = NIMServiceSpec.from_body(obj["spec"])
        assert spec.proxy is not None
        assert spec.proxy.cert_config_map == "corp-ca"

    def test_nimcache_profile_passes(self) -> None:
        obj = nimservice(storage={"nimCache": {"name": "llama", "profile": "vllm-bf16-tp1"}})
        assert cel_violations(obj) == []
        ref = NIMServiceSpec.from_body(obj["spec"]).storage.nim_cache
        assert ref is not None
        assert ref.profile == "vllm-bf16-tp1"

    def test_nvidia_extra_containers_pass(self) -> None:
        image = {"repository": "busybox", "tag": "1.36", "pullPolicy": "IfNotPresent"}
        init = {"name": "prep", "image": image, "command": ["sh", "-c"], "workingDir": "/w"}
        sidecar = {"name": "agent", "image": image, "env": [{"name": "A", "value": "1"}]}
        obj = nimservice(initContainers=[init], sidecarContainers=[sidecar])
        assert cel_violations(obj) == []
        NIMServiceSpec.from_body(obj["spec"])

    def test_nvidia_style_nimservice_passes(self) -> None:
        assert cel_violations(NVIDIA_STYLE) == []
        spec = NIMServiceSpec.model_validate(NVIDIA_STYLE["spec"])
        assert spec.gpu_count() == 1
        assert spec.tolerations is not None
        assert spec.tolerations[0].toleration_seconds == 300

    @pytest.mark.parametrize(
        "expose",
        [
            # NVIDIA's documented shapes: service ports, the deprecated expose.ingress, the router.
            {"service": {"name": "llm", "grpcPort": 8001, "metricsPort": 8002}},
            {
                "ingress": {
                    "enabled": True,
                    "spec": {
                        "ingressClassName": "nginx",
                        "rules": [
                            {
                                "host": "llama.example.com",
                                "http": {
                                    "paths": [
                                        {
                                            "path": "/",
                                            "pathType": "Prefix",
                                            "backend": INGRESS_BACKEND,
                                        }
                                    ]
                                },
                            }
                        ],
                    },
                },
                "router": {"gateway": {"namespace": "gw", "name": "public"}},
            },
            {"router": {"hostDomainName": "example.com", "ingress": {"ingressClass": "nginx"}}},
            {
                "service": {"grpcPort": 8001},
                "router": {
                    "hostDomainName": "example.com",
                    "gateway": {"namespace": "gw", "name": "public", "grpcRoutesEnabled": True},
                },
            },
            {"ingress": {"enabled": False}},
            {
                "router": {
                    "hostDomainName": "example.com",
                    "gateway": {
                        "namespace": "gw",
                        "name": "public",
                        "backendRef": {
                            "group": "inference.networking.k8s.io",
                            "kind": "InferencePool",
                            "name": "llama",
                        },
                    },
                },
            },
        ],
    )
    def test_exposure_specs_pass(self, expose: dict[str, Any]) -> None:
        assert cel_violations(nimservice(expose=expose)) == []
        obj = nimservice(expose=expose)
        stored = apply_defaults(openapi_root(), copy.deepcopy(obj))
        parsed = NIMServiceSpec.model_validate(stored["spec"])
        assert parsed == NIMServiceSpec.model_validate(obj["spec"])

    @pytest.mark.parametrize(
        "autoscaling",
        [
            {"maxReplicas": 4},
            {"maxReplicas": 4, "metric": "kvCache", "target": 0.8},
            {"maxReplicas": 4, "metric": "queue", "target": 80.0},
            {"minReplicas": 2, "maxReplicas": 2, "scaleDownStabilizationSeconds": 0},
        ],
    )
    def test_built_in_autoscaler_specs_pass(self, autoscaling: dict[str, Any]) -> None:
        """Alone, or with an HPA configured but switched off (NVIDIA manifests keep one)."""
        hpa_off = {"enabled": False, "hpa": {"maxReplicas": 5}}
        for spec in ({"autoscaling": autoscaling}, {"autoscaling": autoscaling, "scale": hpa_off}):
            assert cel_violations(nimservice(**spec)) == []
            parsed = NIMServiceSpec.model_validate(nimservice(**spec)["spec"])
            assert parsed.desired_replicas() is None

    def test_defaults_mean_what_the_model_assumes(self) -> None:
        """What the API server stores (defaults applied) parses to the same spec as the input."""
        for obj in [NVIDIA_STYLE, nimservice(), *(yaml.safe_load(p.read_text()) for p in SAMPLES)]:
            stored = apply_defaults(openapi_root(), copy.deepcopy(obj))
            assert NIMServiceSpec.model_validate(stored["spec"]) == NIMServiceSpec.model_validate(
                obj["spec"]
            )


class TestInvalidObjects:
    @pytest.mark.parametrize(("spec", "message"), INVALID_SPECS.values(), ids=INVALID_SPECS.keys())
    def test_cel_and_model_reject_with_the_same_message(
        self, spec: dict[str, Any], message: str
    ) -> None:
        violations = cel_violations(nimservice(**spec))
        assert any(message in violation for violation in violations), violations
        with pytest.raises(ValidationError, match=re.escape(message)):
            NIMServiceSpec.model_validate(nimservice(**spec)["spec"])

    @pytest.mark.parametrize("name", ["9llama", "Llama", "l" * 64, "llama.v1"])
    def test_name_must_be_a_service_name(self, name: str) -> None:
        violations = cel_violations(nimservice(name))
        assert any("must be a DNS-1035 label" in violation for violation in violations)

    @pytest.mark.parametrize("name", ["llama", "llama-3-1-8b", "l" * 63])
    def test_good_names_pass(self, name: str) -> None:
        assert cel_violations(nimservice(name)) == []
