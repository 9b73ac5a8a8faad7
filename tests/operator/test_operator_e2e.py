"""End-to-end: the real operator process reconciling NIMServices, on kmock or a real cluster.

Every test runs twice when KUBECONFIG is set: against tests/support's API-server emulator and
against the real cluster (`-m k8s`). The scenario code is the same; only `driver` differs. On
kmock it plays the controller manager, scheduler and kubelet when a test says what the pods of a
Deployment now look like; on a real cluster they do it themselves. The specs are chosen to
produce those states for real on a GPU-less cluster such as kind: `pause` for a pod that just
runs, busybox exiting non-zero for a crash loop, `gpu.count: 1` for Insufficient nvidia.com/gpu.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from nim_operator.kube import ApiError, ResourceKind
from tests.operator.conftest import NAMESPACE_PREFIX, NAMESPACES, RECONCILE_INTERVAL
from tests.support.kmock_harness import PodState

# Re-exported: the e2e modules import the handle and its kind from here, with the specs.
from tests.support.nimservice_e2e import E2E as E2E
from tests.support.nimservice_e2e import NIMSERVICES as NIMSERVICES

DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
SERVICES = ResourceKind("v1", "services")
SERVICE_ACCOUNTS = ResourceKind("v1", "serviceaccounts")
HPAS = ResourceKind("autoscaling/v2", "horizontalpodautoscalers")
PDBS = ResourceKind("policy/v1", "poddisruptionbudgets")
PVCS = ResourceKind("v1", "persistentvolumeclaims")
SECRETS = ResourceKind("v1", "secrets")

# Runs as any non-root user and does nothing: "Running" without a model server.
PAUSE = {"repository": "registry.k8s.io/pause", "tag": "3.10"}
NO_PROBES = {
    "livenessProbe": {"enabled": False},
    "readinessProbe": {"enabled": False},
    "startupProbe": {"enabled": False},
}
SELECTOR = "app.kubernetes.io/instance={name},app.kubernetes.io/name=nim-service"
CONDITION_TYPES = {"Ready", "Progressing", "Degraded", "Failed"}


def cpu_spec(**overrides: Any) -> dict[str, Any]:
    """A NIMService spec that runs on a cluster without GPUs and without the NIM image."""
    spec: dict[str, Any] = {
        "image": dict(PAUSE),
        "gpu": {"count": 0},
        "shutdownTimeoutSeconds": 0,
        **copy.deepcopy(NO_PROBES),
    }
    spec.update(overrides)
    return spec


def ready_because(reason: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: condition(obj, "Ready").get("reason") == reason


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return dict(item)
    return {}


def _owner_refs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(obj["metadata"].get("ownerReferences") or [])


async def test_create_renders_children_owned_by_the_nimservice(e2e: E2E) -> None:
    nim = await e2e.create("llm", cpu_spec(replicas=2))
    uid = nim["metadata"]["uid"]

    expected_owner = {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "name": "llm",
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for kind in (SERVICE_ACCOUNTS, SERVICES, DEPLOYMENTS, PDBS):
        child = await e2e.child(kind, "llm")
        assert _owner_refs(child) == [expected_owner], kind.plural
    deployment = await e2e.child(DEPLOYMENTS, "llm")
    assert deployment["spec"]["replicas"] == 2
    managers = {(m["manager"], m["operation"]) for m in deployment["metadata"]["managedFields"]}
    assert ("nimstack-operator", "Apply") in managers  # server-side apply, our field manager
    assert await e2e.get(HPAS, "llm") is None

    nim = await e2e.status_where(
        "llm", lambda o: (o.get("status") or {}).get("observedGeneration") == 1, "status observed"
    )
    status = nim["status"]
    assert status["selector"] == SELECTOR.format(name="llm")
    endpoint = f"http://llm.{e2e.namespace}.svc.cluster.local:8000"
    assert status["endpoint"] == endpoint
    assert status["model"] == {"name": "llm", "clusterEndpoint": endpoint}
    assert {c["type"] for c in status["conditions"]} == CONDITION_TYPES
    assert condition(nim, "Failed")["status"] == "False"


async def test_spec_update_reaches_the_children(e2e: E2E) -> None:
    await e2e.create("llm", cpu_spec())
    await e2e.child(DEPLOYMENTS, "llm")

    await e2e.patch_spec(
        "llm",
        {
            "image": {"tag": "3.9"},
            "env": [{"name": "NIM_LOG_LEVEL", "value": "DEBUG"}],
            "expose": {"service": {"port": 9000}},
        },
    )

    async def deployment_updated() -> dict[str, Any] | None:
        deployment = await e2e.get(DEPLOYMENTS, "llm")
        container = (deployment or {}).get("spec", {}).get("template", {}).get("spec", {})
        nim = (container.get("containers") or [{}])[0]
        env = {e["name"]: e.get("value") for e in nim.get("env", [])}
        ok = nim.get("image") == "registry.k8s.io/pause:3.9" and env.get("NIM_LOG_LEVEL") == "DEBUG"
        return deployment if ok else None

    await e2e.until(deployment_updated, "new image and env in the Deployment")

    async def service_on_9000() -> bool:
        service = await e2e.get(SERVICES, "llm")
        return bool(service) and service["spec"]["ports"][0]["port"] == 9000

    await e2e.until(service_on_9000, "Service port 9000")
    nim = await e2e.status_where(
        "llm",
        lambda o: (o.get("status") or {}).get("observedGeneration") == 2,
        "generation 2 observed",
    )
    assert nim["status"]["endpoint"].endswith(":9000")
    assert all(c["observedGeneration"] == 2 for c in nim["status"]["conditions"])


async def test_hand_edits_and_deletions_of_children_are_undone(e2e: E2E) -> None:
    await e2e.create("llm", cpu_spec())
    service = await e2e.child(SERVICES, "llm")
    deployment = await e2e.child(DEPLOYMENTS, "llm")

    # As `kubectl edit` would: a merge patch under another field manager, here re-pointing the
    # Service's selector (a field the operator applies). Services are not watched, so only the
    # timer can notice: within one interval, plus a reconcile's time.
    # (Server-side apply restores the fields the operator declares; a field it does not declare,
    # such as an extra port added by hand, is left to whoever added it.)
    hijack = {"spec": {"selector": {"app.kubernetes.io/name": "something-else"}}}
    await e2e.api.merge_patch(SERVICES, e2e.namespace, "llm", hijack, field_manager="kubectl-edit")

    async def service_restored() -> bool:
        svc = await e2e.get(SERVICES, "llm")
        return bool(svc) and svc["spec"]["selector"] == service["spec"]["selector"]

    await e2e.until(
        service_restored, "Service selector restored", within=2 * RECONCILE_INTERVAL + 3
    )

    await e2e.api.merge_patch(
        DEPLOYMENTS, e2e.namespace, "llm", {"spec": {"replicas": 4}}, field_manager="kubectl-edit"
    )

    async def replicas_restored() -> bool:
        dep = await e2e.get(DEPLOYMENTS, "llm")
        return bool(dep) and dep["spec"]["replicas"] == 1

    await e2e.until(replicas_restored, "replicas restored", within=2 * RECONCILE_INTERVAL + 3)

    await e2e.api.delete(DEPLOYMENTS, e2e.namespace, "llm")

    async def recreated() -> dict[str, Any] | None:
        dep = await e2e.get(DEPLOYMENTS, "llm")
        return dep if dep and dep["metadata"]["uid"] != deployment["metadata"]["uid"] else None

    await e2e.until(recreated, "deleted Deployment re-created")
    assert service["metadata"]["uid"] == (await e2e.child(SERVICES, "llm"))["metadata"]["uid"]


async def test_hpa_owns_replicas_while_on_and_the_spec_does_again_when_off(e2e: E2E) -> None:
    await e2e.create("llm", cpu_spec(replicas=3))

    async def replicas_are(n: int) -> bool:
        deployment = await e2e.get(DEPLOYMENTS, "llm")
        return bool(deployment) and deployment["spec"].get("replicas") == n

    await e2e.until(lambda: replicas_are(3), "3 replicas")

    # Autoscaling on: the operator stops declaring replicas. Dropping a field a manager applied
    # alone makes the API server remove it (and default it to 1): the count must survive.
    autoscaled = {"enabled": True, "hpa": {"minReplicas": 2, "maxReplicas": 5}}
    await e2e.patch_spec("llm", {"replicas": None, "scale": autoscaled})
    hpa = await e2e.child(HPAS, "llm")
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm"}
    assert hpa["spec"]["scaleTargetRef"] == target
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    a_few_ticks = 2.5 * RECONCILE_INTERVAL
    await e2e.stays(lambda: replicas_are(3), "3 replicas after the hand-over", seconds=a_few_ticks)

    # The HPA (here: the test, writing the scale subresource as the HPA controller does)
    # chooses 4; reconciles must leave that alone.
    await e2e.api.merge_patch(
        DEPLOYMENTS,
        e2e.namespace,
        "llm",
        {"spec": {"replicas": 4}},
        subresource="scale",
        field_manager="kube-controller-manager",
    )
    await e2e.stays(lambda: replicas_are(4), "the HPA's 4 replicas", seconds=a_few_ticks)

    # Autoscaling off: the HPA goes, the spec's count is enforced again.
    await e2e.patch_spec("llm", {"replicas": 1, "scale": {"enabled": False, "hpa": None}})

    async def hpa_gone_and_one_replica() -> bool:
        return await e2e.get(HPAS, "llm") is None and await replicas_are(1)

    await e2e.until(hpa_gone_and_one_replica, "HPA deleted and replicas back to 1")


async def test_a_misconfigured_service_fails_and_the_others_still_reconcile(e2e: E2E) -> None:
    await e2e.create("broken", cpu_spec(authSecret="ngc-credentials"))
    await e2e.create("healthy", cpu_spec())

    broken = await e2e.status_where(
        "broken", lambda o: condition(o, "Failed").get("status") == "True", "Failed"
    )
    failed = condition(broken, "Failed")
    assert failed["reason"] == "SecretNotFound"
    assert '"ngc-credentials"' in failed["message"]
    assert broken["status"]["state"] == "Failed"
    assert condition(broken, "Ready")["status"] == "False"
    await e2e.child(DEPLOYMENTS, "healthy")
    # Nothing is applied for a spec that cannot work.
    assert await e2e.get(DEPLOYMENTS, "broken") is None

    async def warning_posted() -> list[dict[str, Any]]:
        return [
            e
            for e in await e2e.events_for("broken")
            if e.get("type") == "Warning" and e.get("reason") == "SecretNotFound"
        ]

    await e2e.until(warning_posted, "a Warning Event SecretNotFound")

    # Fix it without touching the NIMService: the operator notices on its own.
    secret_value = "nvapi-test-value-must-not-leak"
    await e2e.api.create(
        SECRETS,
        e2e.namespace,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "ngc-credentials"},
            "stringData": {"NGC_API_KEY": secret_value},
        },
    )
    recovered = await e2e.status_where(
        "broken", lambda o: condition(o, "Failed").get("status") == "False", "recovered"
    )
    deployment = await e2e.child(DEPLOYMENTS, "broken")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    reference = {"secretKeyRef": {"name": "ngc-credentials", "key": "NGC_API_KEY"}}
    assert {"name": "NGC_API_KEY", "valueFrom": reference} in env
    assert secret_value not in str(recovered)
    assert secret_value not in str(await e2e.events_for("broken"))
    assert secret_value not in e2e.operator.log_tail(lines=100_000)


async def test_a_spec_pydantic_rejects_is_failed_not_crashed(e2e: E2E) -> None:
    # NVIDIA's early spec.nimCache and spec.storage.nimCache naming different caches.
    spec = cpu_spec(nimCache={"name": "old"}, storage={"nimCache": {"name": "new"}})
    if not e2e.driver.emulated:
        # The API server's CEL rules reject this spec before the operator can see it.
        with pytest.raises(ApiError) as rejected:
            await e2e.create("invalid", spec)
        assert rejected.value.status == 422
        assert "nimCache" in rejected.value.message
        return
    await e2e.create("invalid", spec)
    await e2e.create("valid", cpu_spec())
    invalid = await e2e.status_where(
        "invalid", lambda o: condition(o, "Failed").get("status") == "True", "Failed"
    )
    failed = condition(invalid, "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "spec.storage" in failed["message"]
    assert "nimCache" in failed["message"]
    assert invalid["status"]["observedGeneration"] == 1
    await e2e.child(DEPLOYMENTS, "valid")
    assert e2e.operator.alive()


async def test_status_tells_why_pods_are_not_serving(e2e: E2E) -> None:
    crash = {
        "image": {"repository": "busybox", "tag": "1.36"},
        "command": ["sh", "-c", "echo cannot load model >&2; exit 3"],
    }
    await e2e.create("no-gpu", cpu_spec(gpu={"count": 1}))
    await e2e.create("crashing", cpu_spec(**crash))
    await e2e.create("serving", cpu_spec())
    for name, state in (
        ("no-gpu", PodState.UNSCHEDULABLE_GPU),
        ("crashing", PodState.CRASH_LOOP),
        ("serving", PodState.READY),
    ):
        await e2e.child(DEPLOYMENTS, name)
        await e2e.driver.pods_become(e2e.namespace, name, state)

    no_gpu = await e2e.status_where("no-gpu", ready_because("InsufficientGPU"), "InsufficientGPU")
    assert "Insufficient nvidia.com/gpu" in condition(no_gpu, "Ready")["message"]
    assert condition(no_gpu, "Degraded")["status"] == "True"
    assert no_gpu["status"]["state"] == "Pending"

    crashing = await e2e.status_where("crashing", ready_because("CrashLoopBackOff"), "crash loop")
    assert "exit code 3" in condition(crashing, "Ready")["message"]
    assert condition(crashing, "Degraded")["reason"] == "CrashLoopBackOff"
    assert crashing["status"]["state"] == "NotReady"

    serving = await e2e.status_where(
        "serving", lambda o: condition(o, "Ready").get("status") == "True", "Ready"
    )
    assert serving["status"]["state"] == "Ready"
    assert serving["status"]["readyReplicas"] == 1
    assert serving["status"]["availableReplicas"] == 1
    assert condition(serving, "Degraded")["status"] == "False"

    async def rollout_complete() -> bool:
        obj = await e2e.get(NIMSERVICES, "serving")
        return condition(obj, "Progressing").get("reason") == "RolloutComplete"

    await e2e.until(rollout_complete, "Progressing=False RolloutComplete")

    async def gpu_warning() -> list[dict[str, Any]]:
        return [
            e
            for e in await e2e.events_for("no-gpu")
            if e.get("type") == "Warning" and e.get("reason") == "InsufficientGPU"
        ]

    await e2e.until(gpu_warning, "a Warning Event InsufficientGPU")


async def test_turning_a_feature_off_deletes_only_what_the_operator_owns(e2e: E2E) -> None:
    retained = {"pvc": {"create": True, "size": "1Gi", "retainPolicy": "Retain"}}
    await e2e.create("llm", cpu_spec(replicas=2, storage=retained))
    await e2e.child(PDBS, "llm")
    pvc = await e2e.child(PVCS, "llm-pvc")
    assert not pvc["metadata"].get("ownerReferences")  # the model cache outlives the service

    await e2e.patch_spec("llm", {"replicas": 1, "storage": {"pvc": None, "emptyDir": {}}})

    async def pdb_gone() -> bool:
        return await e2e.get(PDBS, "llm") is None

    await e2e.until(pdb_gone, "PodDisruptionBudget deleted (replicas 1)")
    await e2e.stays(
        lambda: _exists(e2e, PVCS, "llm-pvc"), "the retained PVC", seconds=1.5 * RECONCILE_INTERVAL
    )


async def _exists(e2e: E2E, kind: ResourceKind, name: str) -> bool:
    return await e2e.get(kind, name) is not None


async def test_metrics_without_the_servicemonitor_crd_say_so(e2e: E2E) -> None:
    if await e2e.api.has_resource("monitoring.coreos.com/v1", "servicemonitors"):
        pytest.skip("this cluster has the ServiceMonitor CRD")
    await e2e.create("llm", cpu_spec(metrics={"enabled": True}))
    nim = await e2e.status_where(
        "llm",
        lambda o: condition(o, "Degraded").get("reason") == "ServiceMonitorCRDMissing",
        "Degraded ServiceMonitorCRDMissing",
    )
    assert "ServiceMonitor" in condition(nim, "Degraded")["message"]
    await e2e.child(DEPLOYMENTS, "llm")  # the rest is still applied


async def test_deleting_the_nimservice_removes_its_children(e2e: E2E) -> None:
    keep = {"pvc": {"create": True, "size": "1Gi", "retainPolicy": "Retain"}}
    await e2e.create("llm", cpu_spec(storage=keep))
    await e2e.child(DEPLOYMENTS, "llm")
    await e2e.child(PVCS, "llm-pvc")

    await e2e.api.delete(NIMSERVICES, e2e.namespace, "llm")

    async def all_gone() -> bool:
        for kind in (NIMSERVICES, DEPLOYMENTS, SERVICES, SERVICE_ACCOUNTS):
            if await e2e.get(kind, "llm") is not None:
                return False
        return True

    await e2e.until(all_gone, "NIMService and children deleted")
    assert await e2e.get(PVCS, "llm-pvc") is not None


async def test_namespaces_that_come_and_go_at_once_do_not_stall_the_operator(e2e: E2E) -> None:
    """Namespaces the operator's glob matches, deleted before it has listed them, must not hold
    the handlers of every other namespace (a kopf index's readiness flag did, for good)."""
    for _ in range(5):
        name = f"{NAMESPACE_PREFIX}gone-{secrets.token_hex(3)}"
        manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        await e2e.api.create(NAMESPACES, None, manifest)
        await e2e.api.delete(NAMESPACES, None, name)
    await e2e.create("llm", cpu_spec(replicas=1))
    await e2e.child(DEPLOYMENTS, "llm")


# A NIMService as NVIDIA's field reference writes one (apps.nvidia.com), using the fields this
# operator took over from it: inferencePlatform, proxy, initContainers, sidecarContainers, an
# hf:// model with only HF_TOKEN in the authSecret, and a created PVC.
NVIDIA_SHAPED = """
apiVersion: apps.nvidia.com/v1alpha1
kind: NIMService
metadata:
  name: llama-hf
spec:
  inferencePlatform: standalone
  image:
    repository: nvcr.io/nim/nvidia/llm-nim
    tag: "1.12.0"
    pullPolicy: IfNotPresent
    pullSecrets:
      - ngc-secret
  authSecret: hf-api-secret
  env:
    - name: NIM_MODEL_NAME
      value: hf://meta-llama/Llama-3.2-1B-Instruct
  storage:
    pvc:
      create: true
      size: 1Gi
      volumeAccessMode: ReadWriteOnce
  proxy:
    httpProxy: http://proxy.corp.example:3128
    httpsProxy: http://proxy.corp.example:3128
    noProxy: localhost,127.0.0.1,.svc,.cluster.local
    certConfigMap: corp-ca-bundle
  initContainers:
    - name: init-setup
      image:
        repository: busybox
        tag: "1.36"
      command: ["sh", "-c"]
      args: ["echo ready"]
      workingDir: /model-store
  sidecarContainers:
    - name: log-shipper
      image:
        repository: fluent/fluent-bit
        tag: "3.1"
      env:
        - name: FLUENT_ENV
          value: production
  replicas: 1
  resources:
    limits:
      nvidia.com/gpu: 1
  expose:
    service:
      type: ClusterIP
      port: 8000
"""


async def test_an_nvidia_shaped_nimservice_renders_every_field(e2e: E2E) -> None:
    body = yaml.safe_load(NVIDIA_SHAPED)
    body["apiVersion"] = "nimstack.dev/v1alpha1"  # the only change NVIDIA's YAML needs
    spec = body["spec"]
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hf-api-secret"},
        "stringData": {"HF_TOKEN": "hf_test"},  # no NGC_API_KEY: the model is on Hugging Face
    }
    await e2e.api.create(SECRETS, e2e.namespace, secret)
    nim = await e2e.create("llama-hf", spec)

    deployment = await e2e.child(DEPLOYMENTS, "llama-hf")
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["init-setup"]
    assert [c["name"] for c in pod["containers"]] == ["nim", "log-shipper"]
    for container in pod["initContainers"] + pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["HTTPS_PROXY"]["value"] == "http://proxy.corp.example:3128"
    assert env["no_proxy"]["value"] == "localhost,127.0.0.1,.svc,.cluster.local"
    assert env["SSL_CERT_FILE"]["value"] == "/etc/nim/proxy-ca/ca-bundle.crt"
    # NVIDIA's samples name the model in env: an hf:// one there needs no NGC_API_KEY either.
    assert env["NIM_MODEL_NAME"]["value"] == "hf://meta-llama/Llama-3.2-1B-Instruct"
    assert env["NGC_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "NIM_SERVED_MODEL_NAME" not in env  # an nvcr.io/nim image names its own model
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["proxy-ca"]["configMap"]["name"] == "corp-ca-bundle"

    pvc = await e2e.child(PVCS, "llama-hf-pvc")
    (owner,) = _owner_refs(pvc)  # deleted with the NIMService, as NVIDIA's is
    assert owner["uid"] == nim["metadata"]["uid"]


async def test_an_nvidia_kserve_nimservice_fails_loudly(e2e: E2E) -> None:
    # The real API server refuses it by CEL; an object stored before that rule (the emulator
    # runs no CEL) must still not be deployed as something else.
    refused: ApiError | None = None
    try:
        await e2e.create("llama-kserve", cpu_spec(inferencePlatform="kserve"))
    except ApiError as error:
        refused = error
    if refused is not None:
        assert (refused.status, "inferencePlatform kserve is not supported" in refused.message) == (
            422,
            True,
        )
        return
    nim = await e2e.status_where(
        "llama-kserve",
        lambda o: condition(o, "Failed").get("status") == "True",
        "Failed",
    )
    assert "inferencePlatform kserve is not supported" in condition(nim, "Failed")["message"]
    assert await e2e.get(DEPLOYMENTS, "llama-kserve") is None
