"""Every invalid NIMService we could think of, and which layer stops it.

One table, `INVALID`. Each row names the layer that rejects the object, and what the rejection
must mention:

* `SCHEMA`: the CRD's structural schema (types, bounds, enums, patterns, required fields). The
  user sees a 422 naming the field. Checked with the CRD schema as JSON Schema (`jsonschema`).
* `CEL`: the CRD's `x-kubernetes-validations` rules; a 422 with the rule's message. Checked with
  cel-python on the defaulted object (tests/operator/test_crd_cel.py's harness).
* `UNKNOWN`: a field the schema does not declare. With `fieldValidation=Strict` (what kubectl
  sends by default) a 400 naming the field; without it the API server prunes the field and only
  warns, so the operator never sees it. Checked with the strict schema, and the pruning on the
  emulator (and the real cluster).
* `OPERATOR`: passes the API server; only the operator can tell. The NIMService ends `Failed`
  with a reason, and a Warning Event is posted. Checked with the real operator process on kmock
  (and on a real cluster).

Each row is also checked to pass the layers before its own, so the table cannot claim a layer
that does not actually catch it. Rows the API server rejects also reach the operator on kmock the
way they reach it on a real cluster: stored under an older CRD whose schema did not check the
spec, which is then upgraded to crds/'s (the emulator validates every write against the CRD's
schema, and keeps what was stored before; it runs no CEL): each must end `Failed` with
`InvalidSpec`/`InvalidName` and nothing applied. With KUBECONFIG set, the `k8s` variant creates
every SCHEMA, CEL and UNKNOWN row with the Kubernetes client and asserts the API server's own
message names the field.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import pytest
import pytest_asyncio
import yaml

from nim_operator.kube import ApiError, KubeClient, ResourceKind
from tests.operator.test_crd_cel import apply_defaults, cel_violations, openapi_root
from tests.operator.test_operator_e2e import DEPLOYMENTS, E2E, NIMSERVICES, condition, cpu_spec
from tests.support.crd_validation import schema_errors
from tests.support.kmock_cluster import (
    DELIBERATELY_INVALID,
    EmulatedCluster,
    nimservice_crd,
    project_crds,
)
from tests.support.kmock_harness import (
    EmulatedControllers,
    OperatorProcess,
    connection_from_kubeconfig,
)
from tests.support.kmock_strict import Rejection

NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
CRD_KIND = ResourceKind("apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False)
TEST_CLIENT = "invalid-test"  # the User-Agent of this module's own requests


class Layer(enum.Enum):
    SCHEMA = "structural schema"
    CEL = "CEL rule"
    UNKNOWN = "unknown field"
    OPERATOR = "operator: Failed"


DELETE = object()  # an override that removes the field from the base spec


@dataclass(frozen=True)
class Invalid:
    id: str
    layer: Layer
    # Merged into a valid CPU-only spec (tests.operator.test_operator_e2e.cpu_spec).
    overrides: dict[str, Any]
    # SCHEMA/UNKNOWN: the field path the rejection names; CEL: a fragment of the rule's message;
    # OPERATOR: the Failed condition's reason.
    expect: str
    # OPERATOR: a fragment of the Failed message.
    message: str = ""
    name: str = field(default="")

    @property
    def object_name(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.id.lower()).strip("-")
        return self.name or f"bad-{slug}"[:63].rstrip("-")


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is DELETE:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict) and value:
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def nimservice(row: Invalid) -> dict[str, Any]:
    return {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": row.object_name},
        "spec": _merge(cpu_spec(), row.overrides),
    }


HPA = {"enabled": True, "hpa": {"maxReplicas": 3}}
S, C, U, OP = Layer.SCHEMA, Layer.CEL, Layer.UNKNOWN, Layer.OPERATOR

INVALID = [
    # --- replicas and scaling
    Invalid("negative replicas", S, {"replicas": -1}, "spec.replicas"),
    Invalid("replicas as a word", S, {"replicas": "two"}, "spec.replicas"),
    Invalid("replicas and scale.enabled", C, {"replicas": 2, "scale": HPA}, "mutually exclusive"),
    Invalid("scale.enabled without hpa", C, {"scale": {"enabled": True}}, "scale.hpa (at least"),
    Invalid(
        "hpa without maxReplicas",
        S,
        {"scale": {"enabled": True, "hpa": {"minReplicas": 1}}},
        "spec.scale.hpa.maxReplicas",
    ),
    Invalid(
        "hpa minReplicas 0",
        S,
        {"scale": {"enabled": True, "hpa": {"minReplicas": 0, "maxReplicas": 2}}},
        "spec.scale.hpa.minReplicas",
    ),
    Invalid(
        "hpa max below min",
        C,
        {"scale": {"enabled": True, "hpa": {"minReplicas": 3, "maxReplicas": 2}}},
        "maxReplicas must be >= scale.hpa.minReplicas",
    ),
    Invalid(
        "metric without its source",
        C,
        {"scale": {"enabled": True, "hpa": {"maxReplicas": 2, "metrics": [{"type": "Pods"}]}}},
        "needs the source of that type",
    ),
    # --- image
    Invalid("missing image", S, {"image": DELETE}, "spec.image"),
    Invalid(
        "missing image.repository", S, {"image": {"repository": DELETE}}, "spec.image.repository"
    ),
    Invalid("empty image.repository", S, {"image": {"repository": ""}}, "spec.image.repository"),
    Invalid("missing image.tag", S, {"image": {"tag": DELETE}}, "spec.image.tag"),
    Invalid(
        "pullPolicy Sometimes", S, {"image": {"pullPolicy": "Sometimes"}}, "spec.image.pullPolicy"
    ),
    Invalid(
        "a pull secret named twice",
        S,
        {"image": {"pullSecrets": ["ngc", "ngc"]}},
        "spec.image.pullSecrets",
    ),
    # --- resources and quantities
    Invalid(
        "memory: lots",
        S,
        {"resources": {"limits": {"memory": "lots"}}},
        "spec.resources.limits.memory",
    ),
    Invalid(
        "cpu: 2 cores",
        S,
        {"resources": {"requests": {"cpu": "2 cores"}}},
        "spec.resources.requests.cpu",
    ),
    Invalid(
        "negative memory",
        S,
        {"resources": {"limits": {"memory": "-1Gi"}}},
        "spec.resources.limits.memory",
    ),
    Invalid(
        "negative integer memory",
        OP,
        {"resources": {"limits": {"memory": -1}}},
        "InvalidSpec",
        message="spec.resources.limits.memory",
    ),
    Invalid(
        "fractional GPU resource",
        OP,
        {"gpu": DELETE, "resources": {"limits": {"nvidia.com/gpu": "0.5"}}},
        "InvalidSpec",
        message="nvidia.com/gpu must be a whole number",
    ),
    Invalid("negative gpu.count", S, {"gpu": {"count": -1}}, "spec.gpu.count"),
    Invalid("65 GPUs", S, {"gpu": {"count": 65}}, "spec.gpu.count"),
    Invalid("half a GPU count", S, {"gpu": {"count": 1.5}}, "spec.gpu.count"),
    Invalid("gpu without count", S, {"gpu": {"count": DELETE}}, "spec.gpu.count"),
    Invalid(
        "gpu twice",
        C,
        {"gpu": {"count": 1}, "resources": {"limits": {"nvidia.com/gpu": 1}}},
        "either in gpu.count or in resources",
    ),
    Invalid("maxModelLen 0", S, {"model": {"maxModelLen": 0}}, "spec.model.maxModelLen"),
    # --- storage
    Invalid(
        "pvc size 50GB",
        S,
        {"storage": {"pvc": {"create": True, "size": "50GB"}}},
        "spec.storage.pvc.size",
    ),
    Invalid(
        "pvc.create without size", C, {"storage": {"pvc": {"create": True}}}, "size is required"
    ),
    Invalid(
        "pvc neither named nor created", C, {"storage": {"pvc": {"subPath": "m"}}}, "either name"
    ),
    # Several storage sources pass: NVIDIA's order picks one (test_nvidia_accepted.py).
    Invalid(
        "spec.nimCache and storage.nimCache differ",
        C,
        {"nimCache": {"name": "llama"}, "storage": {"nimCache": {"name": "other"}}},
        "spec.nimCache (NVIDIA's earlier place for it) and spec.storage.nimCache differ",
    ),
    Invalid(
        "spec.router and expose.router",
        C,
        {
            "router": {"ingress": {"ingressClass": "nginx"}},
            "expose": {"router": {"ingress": {"ingressClass": "nginx"}}},
        },
        "spec.router (NVIDIA's earlier place for it) and spec.expose.router",
    ),
    Invalid(
        "openaiPort and port differ",
        C,
        {"expose": {"service": {"openaiPort": 9000, "port": 8000}}},
        "expose.service.openaiPort (NVIDIA's earlier name for the API port)",
    ),
    Invalid(
        "sidecar named like the server container",
        C,
        {"sidecarContainers": [{"name": "nim", "image": {"repository": "busybox", "tag": "1"}}]},
        "initContainers and sidecarContainers need names unique",
    ),
    Invalid(
        "init container without an image",
        S,
        {"initContainers": [{"name": "prep"}]},
        "spec.initContainers[0].image",
    ),
    Invalid(
        "type embedding",
        C,
        {"type": "embedding"},
        "type embedding and reranking are not supported",
    ),
    Invalid(
        "type reranking",
        C,
        {"type": "reranking"},
        "type embedding and reranking are not supported",
    ),
    Invalid("type unknown", S, {"type": "chat"}, "spec.type"),
    Invalid(
        "inferencePlatform kserve",
        C,
        {"inferencePlatform": "kserve"},
        "inferencePlatform kserve is not supported",
    ),
    Invalid(
        "inferencePlatform unknown",
        S,
        {"inferencePlatform": "triton"},
        "spec.inferencePlatform",
    ),
    Invalid(
        "pvc access mode",
        S,
        {
            "storage": {
                "pvc": {"create": True, "size": "1Gi", "volumeAccessMode": "ReadWriteSometimes"}
            }
        },
        "spec.storage.pvc.volumeAccessMode",
    ),
    Invalid(
        "retainPolicy Keep",
        S,
        {"storage": {"pvc": {"create": True, "size": "1Gi", "retainPolicy": "Keep"}}},
        "spec.storage.pvc.retainPolicy",
    ),
    Invalid("relative hostPath", S, {"storage": {"hostPath": "models"}}, "spec.storage.hostPath"),
    Invalid(
        "shared memory: lots",
        S,
        {"storage": {"sharedMemorySizeLimit": "lots"}},
        "spec.storage.sharedMemorySizeLimit",
    ),
    Invalid(
        "claim that does not exist",
        OP,
        {"storage": {"pvc": {"name": "no-such-claim"}}},
        "PVCNotFound",
        message='"no-such-claim" not found',
    ),
    # --- dynamic resource allocation (NVIDIA's draResources)
    Invalid(
        "draResources claim and template",
        C,
        {"draResources": [{"resourceClaimName": "a", "resourceClaimTemplateName": "b"}]},
        "draResources[] needs exactly one of",
    ),
    Invalid(
        "resources.claims not declared",
        OP,
        {"draResources": [{"resourceClaimName": "a"}], "resources": {"claims": [{"name": "a"}]}},
        "InvalidSpec",
        message="resources.claims names the pod claims of draResources",
    ),
    Invalid(
        "draResources device name not a DNS label",
        OP,
        {"draResources": [{"claimCreationSpec": {"devices": [{"name": "gpu.big"}]}}]},
        "InvalidSpec",
        message="claimCreationSpec.devices[].name must be a DNS label",
    ),
    Invalid(
        "claimCreationSpec without devices",
        S,
        {"draResources": [{"claimCreationSpec": {"devices": []}}]},
        "spec.draResources[0].claimCreationSpec.devices",
    ),
    # --- exposure and probes
    Invalid("port 0", S, {"expose": {"service": {"port": 0}}}, "spec.expose.service.port"),
    Invalid("port 70000", S, {"expose": {"service": {"port": 70000}}}, "spec.expose.service.port"),
    Invalid(
        "grpcPort 0", S, {"expose": {"service": {"grpcPort": 0}}}, "spec.expose.service.grpcPort"
    ),
    Invalid(
        "Service name not a DNS-1035 label",
        S,
        {"expose": {"service": {"name": "Llama_API"}}},
        "spec.expose.service.name",
    ),
    Invalid(
        "hostDomainName with a scheme",
        S,
        {"expose": {"router": {"hostDomainName": "https://example.com"}}},
        "spec.expose.router.hostDomainName",
    ),
    Invalid(
        "router gateway without a name",
        S,
        {"expose": {"router": {"gateway": {"namespace": "gw"}}}},
        "spec.expose.router.gateway.name",
    ),
    Invalid(
        "ingress path without pathType",
        S,
        {
            "expose": {
                "ingress": {
                    "enabled": True,
                    "spec": {"rules": [{"http": {"paths": [{"path": "/"}]}}]},
                }
            }
        },
        "spec.expose.ingress.spec.rules[0].http.paths[0].pathType",
    ),
    Invalid(
        "router ingress and gateway",
        C,
        {
            "expose": {
                "router": {
                    "ingress": {"ingressClass": "nginx"},
                    "gateway": {"namespace": "gw", "name": "public"},
                }
            }
        },
        "ingress and gateway cannot be specified together",
    ),
    Invalid(
        "grpcPort equal to port",
        C,
        {"expose": {"service": {"port": 8000, "grpcPort": 8000}}},
        "port, grpcPort and metricsPort must all differ",
    ),
    Invalid(
        "port by name", S, {"expose": {"service": {"port": "http"}}}, "spec.expose.service.port"
    ),
    Invalid(
        "service type ExternalName",
        S,
        {"expose": {"service": {"type": "ExternalName"}}},
        "spec.expose.service.type",
    ),
    # A probe timing of 0 passes: Kubernetes reads it as its default (test_nvidia_accepted.py).
    Invalid(
        "probe timeout below 0",
        S,
        {
            "livenessProbe": {
                "enabled": True,
                "probe": {"httpGet": {"port": "api"}, "timeoutSeconds": -1},
            }
        },
        "spec.livenessProbe.probe.timeoutSeconds",
    ),
    Invalid(
        "httpGet without port",
        S,
        {"readinessProbe": {"enabled": True, "probe": {"httpGet": {"path": "/v1/health/ready"}}}},
        "spec.readinessProbe.probe.httpGet.port",
    ),
    Invalid(
        "probe without handler",
        C,
        {"livenessProbe": {"probe": {"periodSeconds": 5}}},
        "exactly one of",
    ),
    Invalid(
        "probe with two handlers",
        C,
        {"startupProbe": {"probe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": "api"}}}},
        "exactly one of",
    ),
    Invalid(
        "scrape interval in words",
        S,
        {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
        "spec.metrics.serviceMonitor.interval",
    ),
    # --- environment and credentials
    # Kubernetes 1.34 allows any printable ASCII but '=' in a name (a space or a leading digit).
    Invalid("env name with '='", S, {"env": [{"name": "A=B", "value": "1"}]}, "spec.env[0].name"),
    Invalid(
        "env name with a tab", S, {"env": [{"name": "A\tB", "value": "1"}]}, "spec.env[0].name"
    ),
    Invalid(
        "secretKeyRef without key",
        S,
        {"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s"}}}]},
        "spec.env[0].valueFrom.secretKeyRef.key",
    ),
    Invalid(
        "257 env vars",
        S,
        {"env": [{"name": f"V{i}", "value": "1"} for i in range(257)]},
        "spec.env",
    ),
    Invalid(
        "literal NGC_API_KEY",
        C,
        {"env": [{"name": "NGC_API_KEY", "value": "nvapi-x"}]},
        "must come from a Secret",
    ),
    Invalid(
        "literal HF_TOKEN",
        C,
        {"env": [{"name": "HF_TOKEN", "value": "hf_x"}]},
        "must come from a Secret",
    ),
    Invalid(
        "literal NIM_API_KEY",
        C,
        {"env": [{"name": "NIM_API_KEY", "value": "k"}]},
        "must come from a Secret",
    ),
    Invalid(
        "apiKeySecret without name", S, {"apiKeySecret": {"key": "k"}}, "spec.apiKeySecret.name"
    ),
    Invalid(
        "authSecret that does not exist",
        OP,
        {"authSecret": "ngc-credentials"},
        "SecretNotFound",
        message='authSecret "ngc-credentials" not found',
    ),
    Invalid(
        "apiKeySecret that does not exist",
        OP,
        {"apiKeySecret": {"name": "llm-api-key"}},
        "SecretNotFound",
        message='apiKeySecret "llm-api-key" not found',
    ),
    # --- scheduling, identity, metadata
    Invalid(
        "toleration operator Like",
        S,
        {"tolerations": [{"key": "gpu", "operator": "Like"}]},
        "spec.tolerations[0].operator",
    ),
    Invalid(
        "toleration effect NoRun",
        S,
        {"tolerations": [{"key": "gpu", "effect": "NoRun"}]},
        "spec.tolerations[0].effect",
    ),
    Invalid("tolerations as a map", S, {"tolerations": {"key": "gpu"}}, "spec.tolerations"),
    Invalid(
        "Exists toleration with a value",
        C,
        {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "yes"}]},
        "must not have a value",
    ),
    Invalid(
        "tolerationSeconds without NoExecute",
        C,
        {"tolerations": [{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 5}]},
        "only allowed with effect NoExecute",
    ),
    Invalid(
        "toleration without key or Exists",
        C,
        {"tolerations": [{"value": "x"}]},
        "without a key needs operator Exists",
    ),
    Invalid(
        "affinity of the wrong shape",
        OP,
        {
            "affinity": {
                "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": "gpu-nodes"}
            }
        },
        "ChildRejected",
        message="affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution",
    ),
    Invalid("run as root", S, {"userID": 0}, "spec.userID"),
    Invalid("negative groupID", S, {"groupID": -1}, "spec.groupID"),
    Invalid(
        "shutdown over an hour", S, {"shutdownTimeoutSeconds": 3601}, "spec.shutdownTimeoutSeconds"
    ),
    Invalid("label value not a string", S, {"labels": {"team": 7}}, "spec.labels.team"),
    Invalid("name with a dot", C, {}, "must be a DNS-1035 label", name="llama.v1"),
    # --- fields the schema does not declare
    Invalid("unknown field", U, {"unknownField": 1}, "spec.unknownField"),
    Invalid("replica (typo)", U, {"replica": 2}, "spec.replica"),
    Invalid(
        "pullpolicy (case typo)", U, {"image": {"pullpolicy": "Always"}}, "spec.image.pullpolicy"
    ),
    Invalid(
        "router hostname (hostDomainName spelt as a host)",
        U,
        {"expose": {"router": {"hostname": "llama.example.com"}}},
        "spec.expose.router.hostname",
    ),
    Invalid(
        "storageClassName (PVC spelling)",
        U,
        {"storage": {"pvc": {"create": True, "size": "1Gi", "storageClassName": "fast"}}},
        "spec.storage.pvc.storageClassName",
    ),
]

REJECTED_BY_THE_API_SERVER = [row for row in INVALID if row.layer in (S, C, U)]
REACHES_THE_OPERATOR = [row for row in INVALID if row.layer is OP]


def _ids(rows: list[Invalid]) -> list[str]:
    return [row.id for row in rows]


def schema_verdict(row: Invalid) -> list[str]:
    return schema_errors(openapi_root(), apply_defaults(openapi_root(), nimservice(row)))


def unknown_field_verdict(row: Invalid) -> list[str]:
    obj = apply_defaults(openapi_root(), nimservice(row))
    return [
        line for line in schema_errors(openapi_root(), obj, strict=True) if "unknown field" in line
    ]


class TestTable:
    def test_every_layer_has_rows_and_ids_are_unique(self) -> None:
        assert {row.layer for row in INVALID} == set(Layer)
        assert len({row.id for row in INVALID}) == len(INVALID)
        assert len({row.object_name for row in INVALID}) == len(INVALID)

    @pytest.mark.parametrize("row", INVALID, ids=_ids(INVALID))
    def test_the_layer_named_rejects_it_and_no_earlier_one(self, row: Invalid) -> None:
        schema = schema_verdict(row)
        if row.layer is S:
            assert any(line.startswith(row.expect) for line in schema), schema
            return
        # Past the structural schema (the API server checks that before the CEL rules) ...
        assert schema == []
        cel = cel_violations(nimservice(row))
        if row.layer is C:
            assert any(row.expect in line for line in cel), cel
            return
        assert cel == []
        unknown = unknown_field_verdict(row)
        if row.layer is U:
            assert any(line.startswith(row.expect + ":") for line in unknown), unknown
        else:
            # ... and past CEL and strict field validation: only the operator can tell.
            assert unknown == []


async def _create(e2e: E2E, row: Invalid) -> None:
    await e2e.api.create(NIMSERVICES, e2e.namespace, nimservice(row))


def _failed_because(reason: str) -> Callable[[dict[str, Any]], bool]:
    def test(obj: dict[str, Any]) -> bool:
        failed = condition(obj, "Failed")
        return failed.get("status") == "True" and failed.get("reason") == reason

    return test


async def _assert_failed_with_a_warning(e2e: E2E, row: Invalid, reason: str, fragment: str) -> None:
    name = row.object_name
    obj = await e2e.status_where(name, _failed_because(reason), f"Failed/{reason}")
    assert fragment in condition(obj, "Failed")["message"], condition(obj, "Failed")
    assert obj["status"]["state"] == "Failed"

    async def warning() -> list[dict[str, Any]]:
        return [
            event
            for event in await e2e.events_for(name)
            if event.get("type") == "Warning" and event.get("reason") == reason
        ]

    await e2e.until(warning, f"{name}: a Warning Event {reason}")


async def test_what_passes_the_api_server_ends_failed_with_a_reason(e2e: E2E) -> None:
    await asyncio.gather(*(_create(e2e, row) for row in REACHES_THE_OPERATOR))
    await asyncio.gather(
        *(
            _assert_failed_with_a_warning(e2e, row, row.expect, row.message)
            for row in REACHES_THE_OPERATOR
        )
    )
    for row in REACHES_THE_OPERATOR:
        if row.expect != "ChildRejected":
            # Nothing is applied for a spec that cannot work, or whose dependency is missing.
            assert await e2e.get(DEPLOYMENTS, row.object_name) is None, row.id
    assert e2e.operator.alive()


def older_crd() -> dict[str, Any]:
    """The NIMService CRD as an older release could have shipped it: its spec is not checked."""
    crd = copy.deepcopy(nimservice_crd())
    for version in crd["spec"]["versions"]:
        root = version["schema"]["openAPIV3Schema"]
        root.pop("x-kubernetes-validations", None)
        root["properties"]["spec"] = {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
        }
    return crd


@pytest.fixture(scope="module")
def unvalidated_cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster([older_crd()], deliberate=_the_tests_own_invalid_object) as cluster:
        yield cluster


def _the_tests_own_invalid_object(rejection: Rejection) -> bool:
    return rejection.cause == "body" and rejection.agent == TEST_CLIENT


@pytest.fixture(scope="module")
def unvalidated_operator(
    unvalidated_cluster: EmulatedCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """An operator of its own: the 60 failing NIMServices below must not load the shared one."""
    work = tmp_path_factory.mktemp("unvalidated")
    process = OperatorProcess(
        unvalidated_cluster.write_kubeconfig(work / "kubeconfig"),
        work / "operator.log",
        reconcile_interval="60",
        verbose="true",
    )
    process.start()
    yield process
    process.kill()  # its emulator goes with it; a graceful stop of 60 timers only takes longer


@pytest_asyncio.fixture(loop_scope="session")
async def unvalidated(
    unvalidated_cluster: EmulatedCluster, unvalidated_operator: OperatorProcess, tmp_path: Path
) -> AsyncIterator[E2E]:
    """The emulator with the older CRD installed (its spec is not checked; kmock runs no CEL)."""
    kubeconfig = unvalidated_cluster.write_kubeconfig(tmp_path / "kubeconfig")
    api = KubeClient(connection_from_kubeconfig(kubeconfig), user_agent=TEST_CLIENT)
    await api.create(NAMESPACES, None, {"metadata": {"name": "older-crd"}})
    yield E2E(api, "older-crd", EmulatedControllers(api), unvalidated_operator)
    await api.close()


async def test_what_the_api_server_rejects_fails_in_the_operator_if_it_gets_past(
    unvalidated: E2E,
) -> None:
    """The operator is the net for what an older CRD let in, after the CRD is upgraded."""
    e2e = unvalidated
    rows = [row for row in REJECTED_BY_THE_API_SERVER if row.layer is not U]
    await asyncio.gather(*(_create(e2e, row) for row in rows))
    # Upgrading the CRD leaves stored objects as they are; the operator's writes to them (status,
    # finalizers) still pass, as validation ratcheting lets an unchanged invalid spec through.
    for crd in project_crds():
        await e2e.api.apply(CRD_KIND, crd, field_manager=TEST_CLIENT)
    with pytest.raises(ApiError) as refused:  # ... while a new invalid one is refused now
        await _create(e2e, Invalid("created after the upgrade", S, {"replicas": -1}, ""))
    assert refused.value.status == 422
    await asyncio.gather(
        *(
            _assert_failed_with_a_warning(
                e2e,
                row,
                "InvalidName" if row.name else "InvalidSpec",
                row.expect if row.layer is S else "",
            )
            for row in rows
        )
    )
    for row in rows:
        assert await e2e.get(DEPLOYMENTS, row.object_name) is None, row.id
    assert e2e.operator.alive()


@pytest.mark.parametrize(
    "row", [r for r in INVALID if r.layer is U], ids=_ids([r for r in INVALID if r.layer is U])
)
async def test_unknown_fields_are_pruned_without_strict_validation(e2e: E2E, row: Invalid) -> None:
    """Without fieldValidation=Strict the API server stores the object minus the unknown field."""
    created = await e2e.api.create(NIMSERVICES, e2e.namespace, nimservice(row))
    stored = json.dumps(created["spec"])
    assert row.expect.rsplit(".", 1)[-1] not in stored


@pytest.mark.parametrize("row", REJECTED_BY_THE_API_SERVER, ids=_ids(REJECTED_BY_THE_API_SERVER))
async def test_the_api_server_rejects_naming_the_field(
    backend: str, kubeconfig: Path, crds_installed: None, namespace: str, row: Invalid
) -> None:
    """The API server, through the Kubernetes client, as `kubectl apply` would send it.

    On kmock too, for the schema and unknown-field rows: the emulator validates against the
    CRD's structural schema as the API server does (it runs no CEL).
    """
    if backend != "k8s" and row.layer is C:
        pytest.skip("needs the real API server's CEL validation")
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    client.user_agent = DELIBERATELY_INVALID
    api = kubernetes.client.CustomObjectsApi(client)
    with pytest.raises(kubernetes.client.ApiException) as rejected:
        await asyncio.to_thread(
            api.create_namespaced_custom_object,
            "nimstack.dev",
            "v1alpha1",
            namespace,
            "nimservices",
            nimservice(row),
            field_validation="Strict",
        )
    status = rejected.value.status
    message = json.loads(rejected.value.body or "{}").get("message", "")
    assert status == (400 if row.layer is U else 422), message
    # The path in the API server's words (`spec.tolerations[0].operator: Unsupported value`), or
    # the CEL rule's message.
    assert row.expect in message, message


def test_the_samples_are_not_in_the_table() -> None:
    """The shipped samples pass every layer (a sanity check of the checkers themselves)."""
    for path in sorted((Path(__file__).parents[2] / "manifests" / "samples").glob("*.yaml")):
        sample = yaml.safe_load(path.read_text())
        defaulted = apply_defaults(openapi_root(), copy.deepcopy(sample))
        assert schema_errors(openapi_root(), defaulted, strict=True) == [], path.name
        assert cel_violations(sample) == [], path.name
