"""NVIDIA-shaped YAML, applied with only `apiVersion` changed, does what its fields say.

tests/operator/nvidia_shaped/ holds NIMServices and NIMCaches written by us the way NVIDIA's
k8s-nim-operator field reference writes them (`apps.nvidia.com/v1alpha1`), one file per feature.
Every object must pass our CRDs as the API server checks them (strict field validation, so no
field is pruned; defaults; CEL) and our pydantic models; then the real operator process
reconciles each file on the API-server emulator and the test reads the children it rendered.
(The proxy / initContainers / sidecarContainers / hf:// sample is test_operator_e2e's
NVIDIA_SHAPED; multiNode and draResources have their own e2e modules, which also cover what the
multiNode.computeDomain sample here leaves out: an existing ComputeDomain, the kind missing.)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Coroutine
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from nim_operator.kube import KubeClient, ResourceKind
from nim_operator.models import NIMServiceSpec
from nim_operator.models_nimcache import NIMCacheSpec
from tests.operator.test_crd_cel import apply_defaults, compiled, rules
from tests.operator.test_nimcache_e2e import JOBS, NIMCACHES, cache_where, download_ends
from tests.operator.test_operator_e2e import (
    DEPLOYMENTS,
    E2E,
    HPAS,
    NIMSERVICES,
    PVCS,
    SECRETS,
    SERVICES,
    condition,
)
from tests.support.compute_domain import COMPUTE_DOMAIN_CRD
from tests.support.crd_validation import schema_errors
from tests.support.gateway_api import GATEWAY_API_CRDS
from tests.support.inference_pool import INFERENCE_POOL_CRD
from tests.support.kmock_harness import ClusterDriver, OperatorProcess, install_crds
from tests.support.leaderworkerset import LEADER_WORKER_SET_CRD

REPO = Path(__file__).parents[2]
SAMPLES = Path(__file__).with_name("nvidia_shaped")
OURS = "nimstack.dev/v1alpha1"
INGRESSES = ResourceKind("networking.k8s.io/v1", "ingresses")
HTTP_ROUTES = ResourceKind("gateway.networking.k8s.io/v1", "httproutes")
GRPC_ROUTES = ResourceKind("gateway.networking.k8s.io/v1", "grpcroutes")
LEADER_WORKER_SETS = ResourceKind("leaderworkerset.x-k8s.io/v1", "leaderworkersets")
COMPUTE_DOMAINS = ResourceKind("resource.nvidia.com/v1beta1", "computedomains")
INFERENCE_POOLS = ResourceKind("inference.networking.k8s.io/v1", "inferencepools")
CONFIG_MAPS = ResourceKind("v1", "configmaps")
KINDS = {"NIMService": NIMSERVICES, "NIMCache": NIMCACHES}


def load(name: str) -> list[dict[str, Any]]:
    """The file's objects, with NVIDIA's apiVersion replaced by ours: the only edit allowed."""
    documents = [d for d in yaml.safe_load_all((SAMPLES / name).read_text()) if d]
    for document in documents:
        assert document["apiVersion"] == "apps.nvidia.com/v1alpha1", name
        document["apiVersion"] = OURS
    return documents


@cache
def openapi_root(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / f"{kind.lower()}.yaml").read_text())
    root: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def api_server_verdict(obj: dict[str, Any]) -> list[str]:
    """What kube-apiserver would say on a strict create: unknown fields, schema, then CEL."""
    root = openapi_root(obj["kind"])
    defaulted = apply_defaults(root, copy.deepcopy(obj))
    errors = schema_errors(root, defaulted, strict=True)
    return errors + [
        message
        for rule, message, value in rules(root, defaulted)
        if not compiled(rule).evaluate({"self": celpy.json_to_cel(value)})  # type: ignore[attr-defined]
    ]


FILES = sorted(path.name for path in SAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("name", FILES)
def test_the_api_server_and_our_models_accept_every_object(name: str) -> None:
    for obj in load(name):
        assert api_server_verdict(obj) == [], (name, obj["metadata"]["name"])
        defaulted = apply_defaults(openapi_root(obj["kind"]), copy.deepcopy(obj))
        if obj["kind"] == "NIMService":
            NIMServiceSpec.model_validate(defaulted["spec"])
        else:
            NIMCacheSpec.from_body(defaulted["spec"])


def test_every_file_is_exercised_on_the_emulator() -> None:
    assert set(FILES) == set(SCENARIOS)


# --- on the emulator, with the real operator -------------------------------------------------


@pytest.fixture
def e2e(
    api: KubeClient, namespace: str, driver: ClusterDriver, operator_process: OperatorProcess
) -> E2E:
    if not driver.emulated:
        pytest.skip("images, GPUs and NGC credentials of NVIDIA's samples are not on this cluster")
    return E2E(api, namespace, driver, operator_process)


async def apply(e2e: E2E, name: str) -> dict[str, dict[str, Any]]:
    """Create the file's objects in order; returns them by name as the API server stored them.

    NVIDIA's samples assume the NGC key Secret exists; so does this.
    """
    await secret(e2e, "ngc-api-secret", NGC_API_KEY="nvapi-test")
    created = {}
    for obj in load(name):
        kind = KINDS[obj["kind"]]
        created[obj["metadata"]["name"]] = await e2e.api.create(kind, e2e.namespace, obj)
    return created


async def secret(e2e: E2E, name: str, **keys: str) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": keys}
    await e2e.api.create(SECRETS, e2e.namespace, body)


def server(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return containers[0]


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in server(deployment).get("env", [])}


async def ngc_pvc(e2e: E2E) -> None:
    await apply(e2e, "llm-ngc-pvc.yaml")
    name = "meta-llama3-8b-instruct"
    deployment = await e2e.child(DEPLOYMENTS, name)
    container = server(deployment)
    assert container["image"] == "nvcr.io/nim/meta/llama3-8b-instruct:1.0.3"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "ngc-secret"}]
    env = env_of(deployment)
    # An NGC model: the key is required, so a Secret without it fails at container start.
    assert env["NGC_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "ngc-api-secret",
        "key": "NGC_API_KEY",
    }
    assert env["NIM_CACHE_PATH"]["value"] == "/model-store"
    assert "NIM_SERVED_MODEL_NAME" not in env  # the NIM image names its own model
    probes = {
        kind: container[kind]["httpGet"]["path"] for kind in ("livenessProbe", "readinessProbe")
    }
    assert probes == {"livenessProbe": "/v1/health/live", "readinessProbe": "/v1/health/ready"}
    claim = await e2e.child(PVCS, f"{name}-pvc")
    assert claim["spec"]["storageClassName"] == "local-path"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {"claimName": f"{name}-pvc"}.items() <= volumes["model-store"][
        "persistentVolumeClaim"
    ].items()
    service = await e2e.child(SERVICES, name)
    assert service["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in service["spec"]["ports"]] == [8000]


async def nimcache(e2e: E2E) -> None:
    await secret(e2e, "hf-api-secret", HF_TOKEN="hf_test")
    await apply(e2e, "llm-nimcache.yaml")
    job = await e2e.child(JOBS, "smollm2-cache-download")
    download = job["spec"]["template"]["spec"]["containers"][0]
    assert download["image"] == "nimstack/nim-server:0.1.0"
    # NVIDIA's resources.{cpu, memory}: both the request and the limit.
    assert download["resources"] == {
        "limits": {"cpu": "1", "memory": "4Gi"},
        "requests": {"cpu": "1", "memory": "4Gi"},
    }
    job_env = {e["name"]: e for e in download.get("env", [])}
    assert job_env["HF_ENDPOINT"]["value"] == "https://huggingface.co"
    assert job_env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-api-secret"
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in download["args"]
    assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "ngc-secret"}]
    # The NIMService waits for the cache, saying so, before it renders a Deployment.
    await e2e.status_where(
        "smollm2",
        lambda o: condition(o, "Ready").get("reason") == "NIMCacheNotReady",
        "waiting for its NIMCache",
    )
    assert await e2e.get(DEPLOYMENTS, "smollm2") is None
    message = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "servedName": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "path": "models/HuggingFaceTB--SmolLM2-135M-Instruct",
        "sizeBytes": 269060381,
    }
    await download_ends(
        e2e.api, e2e.namespace, "smollm2-cache-download", exit_code=0, message=json.dumps(message)
    )
    deployment = await e2e.child(DEPLOYMENTS, "smollm2")
    pod = deployment["spec"]["template"]["spec"]
    claim = {v["name"]: v for v in pod["volumes"]}["model-store"]["persistentVolumeClaim"]
    assert claim == {"claimName": "smollm2-cache-pvc", "readOnly": True}
    model = env_of(deployment)["NIM_MODEL_NAME"]["value"]
    assert model.endswith("models/HuggingFaceTB--SmolLM2-135M-Instruct")


async def nimcache_ngc(e2e: E2E) -> None:
    """NGC and NIM images cannot be reached here: the download is played (exit 0), the Job and
    the Deployment are read, never run."""
    await apply(e2e, "llm-nimcache-ngc.yaml")
    name = "meta-llama3-8b-instruct"
    profile = "8835c31752fbc67ef658b20a9f78e056914fdef0660206d82f252d62fd96064d"
    job = await e2e.child(JOBS, f"{name}-download")
    pod = job["spec"]["template"]["spec"]
    (download,) = pod["containers"]
    assert download["image"] == "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3"
    assert (download["command"], download["args"]) == (
        ["download-to-cache"],
        ["--profiles", profile],
    )
    job_env = {e["name"]: e for e in download["env"]}
    assert job_env["NGC_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "ngc-api-secret",
        "key": "NGC_API_KEY",
    }
    assert job_env["NIM_CACHE_PATH"]["value"] == "/model-store"
    assert job_env["HTTPS_PROXY"]["value"] == "http://proxy.corp.example:3128"
    assert job_env["SSL_CERT_FILE"]["value"] == "/etc/nim/proxy-ca/ca-bundle.crt"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["proxy-ca"]["configMap"]["name"] == "corp-ca"
    assert pod["imagePullSecrets"] == [{"name": "ngc-secret"}]
    await download_ends(e2e.api, e2e.namespace, f"{name}-download", exit_code=0, message="")
    deployment = await e2e.child(DEPLOYMENTS, name)
    env = env_of(deployment)
    assert env["NIM_MODEL_PROFILE"]["value"] == profile
    assert env["NIM_CACHE_PATH"]["value"] == "/model-store"
    claim = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert claim["model-store"]["persistentVolumeClaim"]["claimName"] == f"{name}-pvc"
    cache = await e2e.get(NIMCACHES, name)
    assert cache is not None
    assert cache["status"]["profiles"] == [{"name": profile}]


async def nimcache_datastore(e2e: E2E) -> None:
    await secret(e2e, "hf-auth", HF_TOKEN="ds-token")
    await apply(e2e, "llm-nimcache-datastore.yaml")
    name = "llama-3-1b-ds"
    job = await e2e.child(JOBS, f"{name}-download")
    pod = job["spec"]["template"]["spec"]
    (download,) = pod["containers"]
    assert download["args"] == [
        *("download", "--cache-path", "/model-store"),
        *("--model", "default/llama-3.2-1b-instruct"),
    ]
    job_env = {e["name"]: e for e in download["env"]}
    assert job_env["HF_ENDPOINT"]["value"] == (
        "http://nemo-data-store.nemo.svc.cluster.local:3000/v1/hf"
    )
    assert job_env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hf-auth",
        "key": "HF_TOKEN",
    }
    assert job_env["REQUESTS_CA_BUNDLE"]["value"] == "/etc/ssl/datastore/ca-bundle.crt"
    mounts = {m["name"]: m for m in download["volumeMounts"]}
    assert mounts["proxy-ca"]["mountPath"] == "/etc/ssl/datastore"
    assert {v["name"]: v for v in pod["volumes"]}["proxy-ca"]["configMap"]["name"] == (
        "datastore-ca"
    )
    message = {
        "model": "default/llama-3.2-1b-instruct",
        "servedName": "default/llama-3.2-1b-instruct",
        "path": "models/default--llama-3.2-1b-instruct",
        "sizeBytes": 2471645608,
    }
    await download_ends(
        e2e.api, e2e.namespace, f"{name}-download", exit_code=0, message=json.dumps(message)
    )
    deployment = await e2e.child(DEPLOYMENTS, name)
    model = env_of(deployment)["NIM_MODEL_NAME"]["value"]
    assert model == "/model-store/models/default--llama-3.2-1b-instruct"


async def nimcache_ngc_keyless(e2e: E2E) -> None:
    """NVIDIA's newest NIMCache fields: ngc without authSecret, initContainers,
    storage.pvc.annotations, dataStore.revision, and no storage.pvc (the claim <name>-pvc)."""
    await secret(e2e, "hf-auth", HF_TOKEN="ds-token")
    await apply(e2e, "llm-nimcache-ngc-keyless.yaml")
    job = await e2e.child(JOBS, "llama-keyless-download")
    pod = job["spec"]["template"]["spec"]
    (download,) = pod["containers"]
    assert (download["command"], download["args"]) == (
        ["download-to-cache"],
        ["--profiles", "vllm-bf16-tp1"],
    )
    assert "NGC_API_KEY" not in {e["name"] for e in download["env"]}
    (init,) = pod["initContainers"]
    assert (init["name"], init["image"]) == ("wait-for-mirror", "busybox:1.36")
    assert init["args"] == ["until nc -z ngc-mirror.corp.example 443; do sleep 2; done"]
    assert init["env"] == [{"name": "MIRROR", "value": "ngc-mirror.corp.example"}]
    assert init["volumeMounts"] == download["volumeMounts"]
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["imagePullSecrets"] == [{"name": "ngc-secret"}, {"name": "mirror-secret"}]
    claim = await e2e.child(PVCS, "llama-keyless-pvc")
    assert claim["metadata"]["annotations"] == {
        "backup.velero.io/backup-volumes-excludes": "model-store"
    }
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    await download_ends(e2e.api, e2e.namespace, "llama-keyless-download", exit_code=0, message="")
    ready = await cache_where(e2e, "llama-keyless", "Ready")
    assert ready["status"]["profiles"] == [{"name": "vllm-bf16-tp1"}]

    # No storage.pvc: the existing llama-ds-rev-pvc, which does not exist yet.
    failed = await cache_where(e2e, "llama-ds-rev", "Failed")
    (why,) = [c for c in failed["status"]["conditions"] if c["type"] == "Failed"]
    assert why["reason"] == "PVCNotFound"
    assert 'the existing claim "llama-ds-rev-pvc"' in why["message"]
    assert await e2e.get(JOBS, "llama-ds-rev-download") is None
    existing = {
        "metadata": {"name": "llama-ds-rev-pvc"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}},
    }
    await e2e.api.create(PVCS, e2e.namespace, existing)
    job = await e2e.child(JOBS, "llama-ds-rev-download")
    (download,) = job["spec"]["template"]["spec"]["containers"]
    assert download["args"][-4:] == ["--model", "team/llama-3.2-1b-lora", "--revision", "v2"]
    (volume,) = [
        v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "model-store"
    ]
    assert volume["persistentVolumeClaim"] == {"claimName": "llama-ds-rev-pvc"}


async def ingress(e2e: E2E) -> None:
    await apply(e2e, "llm-ingress.yaml")
    created = await e2e.child(INGRESSES, "llama-ingress")
    assert created["spec"]["ingressClassName"] == "nginx"
    (rule,) = created["spec"]["rules"]
    assert rule["host"] == "llama.example.com"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/v1/chat/completions"
    assert path["backend"]["service"] == {"name": "llama-ingress", "port": {"number": 8000}}
    nim = await e2e.status_where(
        "llama-ingress",
        lambda o: bool(((o.get("status") or {}).get("model") or {}).get("externalEndpoint")),
        "externalEndpoint",
    )
    assert nim["status"]["model"]["externalEndpoint"] == "http://llama.example.com"


async def router(e2e: E2E) -> None:
    if not await e2e.api.has_resource("gateway.networking.k8s.io/v1", "httproutes"):
        await install_crds(e2e.api, GATEWAY_API_CRDS, field_manager="nimstack-e2e")
    await apply(e2e, "llm-router.yaml")
    service = await e2e.child(SERVICES, "llama-api")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports["api"] == 8000
    assert 8001 in ports.values()
    assert 8002 in ports.values()
    http = await e2e.child(HTTP_ROUTES, "llama-router")
    (parent,) = http["spec"]["parentRefs"]
    assert (parent["namespace"], parent["name"]) == ("nim-gateway", "istio-gateway")
    assert http["spec"]["hostnames"] == [f"llama-router.{e2e.namespace}.example.com"]
    (backend,) = http["spec"]["rules"][0]["backendRefs"]
    assert (backend["name"], backend["port"]) == ("llama-api", 8000)
    grpc = await e2e.child(GRPC_ROUTES, "llama-router")
    assert grpc["spec"]["rules"][0]["backendRefs"][0]["port"] == 8001


async def hpa(e2e: E2E) -> None:
    await apply(e2e, "llm-hpa.yaml")
    created = await e2e.child(HPAS, "llama-hpa")
    spec = created["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "llama-hpa",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 3)
    (metric,) = spec["metrics"]
    assert metric["object"]["metric"]["name"] == "gpu_cache_usage_perc"
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
    deployment = await e2e.child(DEPLOYMENTS, "llama-hpa")
    # The HPA owns the replica count: the operator's Deployment leaves it alone.
    assert "replicas" not in deployment["spec"] or deployment["spec"]["replicas"] >= 1


async def pod_settings(e2e: E2E) -> None:
    await apply(e2e, "llm-pod-settings.yaml")
    deployment = await e2e.child(DEPLOYMENTS, "llama-pod")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    # tolerationSeconds survives (NVIDIA's text templates once dropped it).
    assert pod["tolerations"][0]["tolerationSeconds"] == 300
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (pod["runtimeClassName"], pod["priorityClassName"], pod["schedulerName"]) == (
        "nvidia",
        "inference-high",
        "default-scheduler",
    )
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        1000,
        2000,
    )
    shm = {v["name"]: v for v in pod["volumes"]}["dshm"]["emptyDir"]
    assert shm == {"medium": "Memory", "sizeLimit": "8Gi"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "search"
    assert deployment["spec"]["template"]["metadata"]["annotations"]["cost-center"] == "42"
    container = server(deployment)
    assert container["command"] == ["/opt/nim/start_server.sh"]
    assert container["args"] == ["--verbose"]
    env = env_of(deployment)
    # The user's env replaces what the operator injects, as at NVIDIA.
    assert env["NIM_LOG_LEVEL"]["value"] == "DEBUG"
    assert env["NIM_MAX_MODEL_LEN"]["value"] == "8192"
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "32Gi"}
    assert container["resources"]["limits"]["memory"] == "64Gi"
    assert "livenessProbe" not in container
    assert container["startupProbe"]["failureThreshold"] == 360
    service = await e2e.child(SERVICES, "llama-pod")
    assert service["metadata"]["annotations"]["service.kubernetes.io/topology-mode"] == "Auto"
    # metrics.enabled: a ServiceMonitor where the CRD exists, else a condition naming it.
    if not await e2e.api.has_resource("monitoring.coreos.com/v1", "servicemonitors"):
        await e2e.status_where(
            "llama-pod",
            lambda o: condition(o, "Degraded").get("reason") == "ServiceMonitorCRDMissing",
            "Degraded ServiceMonitorCRDMissing",
        )


async def multinode_compute_domain(e2e: E2E) -> None:
    # The emulator serves neither kind until their CRDs are installed (the NVIDIA DRA driver's
    # and the LeaderWorkerSet controller's, here with no controller behind them).
    for crd, kind in (
        (LEADER_WORKER_SET_CRD, LEADER_WORKER_SETS),
        (COMPUTE_DOMAIN_CRD, COMPUTE_DOMAINS),
    ):
        if not await e2e.api.has_resource(kind.api_version, kind.plural):
            await install_crds(e2e.api, [crd], field_manager="nimstack-e2e")
    await apply(e2e, "llm-multinode-computedomain.yaml")
    name = "deepseek-r1"
    domain = await e2e.child(COMPUTE_DOMAINS, name)
    template = domain["spec"]["channel"]["resourceClaimTemplate"]["name"]
    assert domain["spec"]["channel"]["allocationMode"] == "Single"
    lws = await e2e.child(LEADER_WORKER_SETS, name)
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2
    for role in ("leaderTemplate", "workerTemplate"):
        pod = group[role]["spec"]
        (claim,) = pod["resourceClaims"]
        assert claim["resourceClaimTemplateName"] == template
        container = pod["containers"][0]
        assert container["image"] == "nvcr.io/nim/deepseek-ai/deepseek-r1:1.7.3"
        assert container["resources"]["limits"]["nvidia.com/gpu"] in (4, "4")
        assert container["resources"]["claims"] == [{"name": claim["name"]}]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["model-store"]["persistentVolumeClaim"]["claimName"] == f"{name}-pvc"
    claim = await e2e.child(PVCS, f"{name}-pvc")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert await e2e.get(DEPLOYMENTS, name) is None


async def leader_worker_sets_served(e2e: E2E) -> None:
    if not await e2e.api.has_resource(LEADER_WORKER_SETS.api_version, LEADER_WORKER_SETS.plural):
        await install_crds(e2e.api, [LEADER_WORKER_SET_CRD], field_manager="nimstack-e2e")


def env_values(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


async def multinode_ray(e2e: E2E) -> None:
    await leader_worker_sets_served(e2e)
    stored = await apply(e2e, "llm-multinode-ray.yaml")
    name = "llama-405b-ray"
    assert stored[name]["spec"]["multiNode"]["ray"] == {"rayPort": 6380}
    group = (await e2e.child(LEADER_WORKER_SETS, name))["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2
    leader = group["leaderTemplate"]["spec"]["containers"][0]
    worker = group["workerTemplate"]["spec"]["containers"][0]
    # NVIDIA's Ray launcher in its NIM image, on the given port.
    assert leader["args"] == ["nim-serve-ray", "--head", "--port", "6380"]
    assert {"name": "ray", "containerPort": 6380, "protocol": "TCP"} in leader["ports"]
    assert worker["args"] == ["nim-serve-ray", "--head-address", "$(LWS_LEADER_ADDRESS):6380"]
    assert worker["startupProbe"]["exec"]["command"] == ["/bin/sh", "-c", "ray status"]
    for container in (leader, worker):
        assert env_values(container)["NIM_TENSOR_PARALLEL_SIZE"] == "8"
        assert env_values(container)["NIM_PIPELINE_PARALLEL_SIZE"] == "2"
    assert await e2e.get(DEPLOYMENTS, name) is None


async def multinode_size_gpus_per_pod(e2e: E2E) -> None:
    await leader_worker_sets_served(e2e)
    stored = await apply(e2e, "llm-multinode-size-gpusperpod.yaml")
    name = "llama-405b-mpi"
    # Kept as written (not pruned), and read as parallelism.pipeline and parallelism.tensor.
    assert stored[name]["spec"]["multiNode"]["size"] == 2
    assert stored[name]["spec"]["multiNode"]["gpusPerPod"] == 8
    group = (await e2e.child(LEADER_WORKER_SETS, name))["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2
    leader = group["leaderTemplate"]["spec"]["containers"][0]
    worker = group["workerTemplate"]["spec"]["containers"][0]
    assert env_values(leader)["GPUS_PER_NODE"] == "8"
    assert env_values(leader)["CLUSTER_START_TIMEOUT"] == "600"
    for container in (leader, worker):
        assert env_values(container)["NIM_NUM_COMPUTE_NODES"] == "2"
        assert env_values(container)["NIM_TENSOR_PARALLEL_SIZE"] == "8"
        assert container["resources"]["limits"]["nvidia.com/gpu"] in (8, "8")
    volumes = {v["name"]: v for v in group["workerTemplate"]["spec"]["volumes"]}
    assert volumes["model-store"]["persistentVolumeClaim"]["claimName"] == f"{name}-pvc"


async def endpoint_picker(e2e: E2E) -> None:
    for crds, kind in ((GATEWAY_API_CRDS, HTTP_ROUTES), ([INFERENCE_POOL_CRD], INFERENCE_POOLS)):
        if not await e2e.api.has_resource(kind.api_version, kind.plural):
            await install_crds(e2e.api, crds, field_manager="nimstack-e2e")
    await apply(e2e, "llm-epp.yaml")
    name = "llama-epp-pool"
    route = await e2e.child(HTTP_ROUTES, name)
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    assert (backend["group"], backend["kind"], backend["name"]) == (
        "inference.networking.k8s.io",
        "InferencePool",
        name,
    )
    pool = await e2e.child(INFERENCE_POOLS, name)
    deployment = await e2e.child(DEPLOYMENTS, name)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    picker = await e2e.child(DEPLOYMENTS, f"{name}-epp")
    assert pool["spec"]["endpointPickerRef"]["name"] == f"{name}-epp"
    container = picker["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.k8s.io/gateway-api-inference-extension/epp:v1.3.1"
    args = container["args"]
    assert args[args.index("--pool-name") + 1] == name
    config_map = await e2e.child(CONFIG_MAPS, f"{name}-epp-config")
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert [p["type"] for p in config["plugins"]] == ["queue-scorer", "kv-cache-utilization-scorer"]
    assert config["schedulingProfiles"][0]["name"] == "default"
    await e2e.child(SERVICES, f"{name}-epp")


async def older_shapes(e2e: E2E) -> None:
    """spec.podAffinity, spec.router and two storage sources render as NVIDIA reads them."""
    if not await e2e.api.has_resource("gateway.networking.k8s.io/v1", "httproutes"):
        await install_crds(e2e.api, GATEWAY_API_CRDS, field_manager="nimstack-e2e")
    await apply(e2e, "llm-older-shapes.yaml")
    deployment = await e2e.child(DEPLOYMENTS, "llama-older")
    pod = deployment["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["weight"] == 100
    assert term["podAffinityTerm"]["labelSelector"] == {
        "matchLabels": {"app": "llama-cache-warmer"}
    }
    # The claim to create wins over the hostPath, which is not mounted at all.
    store = {v["name"]: v for v in pod["volumes"]}["model-store"]
    assert store == {
        "name": "model-store",
        "persistentVolumeClaim": {"claimName": "llama-older-pvc"},
    }
    assert not any("hostPath" in volume for volume in pod["volumes"])
    claim = await e2e.child(PVCS, "llama-older-pvc")
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    # spec.router is expose.router: the HTTPRoute for <name>.<namespace>.<hostDomainName>.
    http = await e2e.child(HTTP_ROUTES, "llama-older")
    (parent,) = http["spec"]["parentRefs"]
    assert (parent["namespace"], parent["name"]) == ("nim-gateway", "istio-gateway")
    assert http["spec"]["hostnames"] == [f"llama-older.{e2e.namespace}.example.com"]
    (backend,) = http["spec"]["rules"][0]["backendRefs"]
    assert (backend["name"], backend["port"]) == ("llama-older", 8000)


SCENARIOS: dict[str, Callable[[E2E], Coroutine[Any, Any, None]]] = {
    "llm-ngc-pvc.yaml": ngc_pvc,
    "llm-nimcache.yaml": nimcache,
    "llm-nimcache-ngc.yaml": nimcache_ngc,
    "llm-nimcache-datastore.yaml": nimcache_datastore,
    "llm-nimcache-ngc-keyless.yaml": nimcache_ngc_keyless,
    "llm-ingress.yaml": ingress,
    "llm-router.yaml": router,
    "llm-epp.yaml": endpoint_picker,
    "llm-hpa.yaml": hpa,
    "llm-pod-settings.yaml": pod_settings,
    "llm-older-shapes.yaml": older_shapes,
    "llm-multinode-computedomain.yaml": multinode_compute_domain,
    "llm-multinode-ray.yaml": multinode_ray,
    "llm-multinode-size-gpusperpod.yaml": multinode_size_gpus_per_pod,
}


@pytest.mark.parametrize("name", FILES)
async def test_the_operator_renders_what_the_fields_say(e2e: E2E, name: str) -> None:
    await SCENARIOS[name](e2e)
