"""End-to-end: the real operator process reconciling NIMCaches, and NIMServices mounting them.

kmock only. The emulator has no Job controller and no kubelet, so the test plays them: when a
scenario says the download finished (or failed), `download_ends` creates the pod the Job
controller would have made, writes the terminated container state the kubelet would report
(exit code and the termination message `nim-serve download` writes), then the Job status the
Job controller would write (`Complete`, or `Failed` by the pod failure policy). Everything else,
the PVC, the Job, the statuses, the NIMService's Deployment, is the real operator's doing.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
from typing import Any

import pytest

from nim_operator.kube import KubeClient, ResourceKind
from tests.operator.test_operator_e2e import (
    DEPLOYMENTS,
    E2E,
    NIMSERVICES,
    PVCS,
    SECRETS,
    condition,
    cpu_spec,
)
from tests.support.kmock_harness import ClusterDriver, OperatorProcess

NIMCACHES = ResourceKind("nimstack.dev/v1alpha1", "nimcaches")
JOBS = ResourceKind("batch/v1", "jobs")
PODS = ResourceKind("v1", "pods")
PULLER = "nimstack/nim-server:0.1.0"


@pytest.fixture
def e2e(
    api: KubeClient, namespace: str, driver: ClusterDriver, operator_process: OperatorProcess
) -> E2E:
    if not driver.emulated:
        pytest.skip("plays the Job controller and the kubelet, which a real cluster has")
    return E2E(api, namespace, driver, operator_process)


def cache_spec(**hf: Any) -> dict[str, Any]:
    return {
        "source": {"hf": {"modelPuller": PULLER, "modelName": "HuggingFaceTB/SmolLM2-135M", **hf}},
        "storage": {"pvc": {"create": True, "size": "2Gi", "subPath": "smollm"}},
    }


async def create_cache(e2e: E2E, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": "nimstack.dev/v1alpha1", "kind": "NIMCache", "metadata": {"name": name}}
    return await e2e.api.create(NIMCACHES, e2e.namespace, {**body, "spec": spec})


async def cache_where(e2e: E2E, name: str, state: str) -> dict[str, Any]:
    async def matching() -> dict[str, Any] | None:
        obj = await e2e.get(NIMCACHES, name)
        return obj if (obj or {}).get("status", {}).get("state") == state else None

    return await e2e.until(matching, f"NIMCache {name}: {state}")


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def download_ends(
    api: KubeClient, namespace: str, job_name: str, *, exit_code: int, message: str
) -> None:
    """Play the Job controller and the kubelet: the download pod ran and exited."""
    job = await api.get(JOBS, namespace, job_name)
    assert job is not None
    uid = job["metadata"]["uid"]
    template = job["spec"]["template"]
    pod = f"{job_name}-{secrets.token_hex(3)}"
    labels = {
        **template["metadata"]["labels"],
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": job_name,
    }
    manifest = {"metadata": {"name": pod, "labels": labels}, "spec": template["spec"]}
    await api.create(PODS, namespace, manifest)
    now = _now()
    terminated = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "message": message,
        "startedAt": now,
        "finishedAt": now,
    }
    container = {
        "name": "download",
        "image": PULLER,
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "state": {"terminated": terminated},
    }
    phase = "Succeeded" if exit_code == 0 else "Failed"
    status = {"phase": phase, "containerStatuses": [container]}
    await api.merge_patch(PODS, namespace, pod, {"status": status}, subresource="status")
    if exit_code == 0:
        job_status: dict[str, Any] = {
            "startTime": now,
            "completionTime": now,
            "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now}],
        }
    else:
        why = (
            f"Container download for pod {namespace}/{pod} failed with exit code {exit_code} "
            "matching FailJob rule at index 0"
        )
        failed = {"status": "True", "reason": "PodFailurePolicy", "message": why}
        job_status = {
            "startTime": now,
            "failed": 1,
            "conditions": [
                {"type": "FailureTarget", **failed, "lastTransitionTime": now},
                {"type": "Failed", **failed, "lastTransitionTime": now},
            ],
        }
    await api.merge_patch(JOBS, namespace, job_name, {"status": job_status}, subresource="status")


SUCCESS = {
    "model": "HuggingFaceTB/SmolLM2-135M",
    "servedName": "HuggingFaceTB/SmolLM2-135M",
    "path": "models/HuggingFaceTB--SmolLM2-135M",
    "sizeBytes": 269060381,
}


async def test_a_nimcache_gets_a_claim_and_a_download_job_then_is_ready(e2e: E2E) -> None:
    token = "hf_" + secrets.token_hex(8)
    secret = {
        "metadata": {"name": "hf"},
        "data": {"HF_TOKEN": base64.b64encode(token.encode()).decode()},
    }
    await e2e.api.create(SECRETS, e2e.namespace, secret)
    cache = await create_cache(e2e, "smollm", cache_spec(authSecret="hf", revision="main"))
    owner = {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMCache",
        "name": "smollm",
        "uid": cache["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }

    pvc = await e2e.child(PVCS, "smollm-pvc")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert pvc["metadata"]["ownerReferences"] == [owner]
    job = await e2e.child(JOBS, "smollm-download")
    assert job["metadata"]["ownerReferences"] == [owner]
    assert job["spec"]["backoffLimit"] == 3
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == PULLER
    assert [*container["command"], *container["args"]] == [
        *("nim-serve", "download", "--cache-path", "/model-store"),
        *("--model", "HuggingFaceTB/SmolLM2-135M", "--revision", "main"),
    ]
    hf_token = {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}},
    }
    assert hf_token in container["env"]
    assert container["volumeMounts"][0] == {
        "name": "model-store",
        "mountPath": "/model-store",
        "subPath": "smollm",
    }
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "smollm-pvc"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    pending = await cache_where(e2e, "smollm", "Pending")
    assert condition(pending, "Ready")["reason"] == "Pending"

    await download_ends(
        e2e.api, e2e.namespace, "smollm-download", exit_code=0, message=json.dumps(SUCCESS)
    )
    ready = await cache_where(e2e, "smollm", "Ready")
    status = ready["status"]
    assert status["pvc"] == "smollm-pvc"
    assert status["job"] == "smollm-download"
    assert status["model"] == {
        "name": SUCCESS["model"],
        "servedName": SUCCESS["servedName"],
        "path": SUCCESS["path"],
        "sizeBytes": SUCCESS["sizeBytes"],
    }
    assert condition(ready, "Ready")["reason"] == "Cached"
    assert condition(ready, "Failed")["status"] == "False"
    assert status["observedGeneration"] == 1
    assert token not in json.dumps(ready)
    assert token not in e2e.operator.log_tail(lines=100_000)


async def test_a_failed_download_names_its_cause(e2e: E2E) -> None:
    await create_cache(e2e, "gated", cache_spec(modelName="meta-llama/Llama-3.1-8B"))
    await e2e.child(JOBS, "gated-download")
    refused = {"reason": "AuthFailed", "message": "meta-llama/Llama-3.1-8B is gated: HF_TOKEN ..."}
    await download_ends(
        e2e.api, e2e.namespace, "gated-download", exit_code=10, message=json.dumps(refused)
    )
    failed = await cache_where(e2e, "gated", "Failed")
    assert condition(failed, "Failed")["status"] == "True"
    assert condition(failed, "Failed")["reason"] == "AuthFailed"
    assert "is gated" in condition(failed, "Failed")["message"]
    assert condition(failed, "Ready")["reason"] == "AuthFailed"


async def test_without_a_message_the_exit_code_names_the_cause(e2e: E2E) -> None:
    await create_cache(e2e, "full", cache_spec())
    await e2e.child(JOBS, "full-download")
    await download_ends(e2e.api, e2e.namespace, "full-download", exit_code=12, message="")
    failed = await cache_where(e2e, "full", "Failed")
    assert condition(failed, "Failed")["reason"] == "DiskFull"


NIM_IMAGE = "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3"


def ngc_spec(**model: Any) -> dict[str, Any]:
    source = {"modelPuller": NIM_IMAGE, "pullSecret": "ngc-secret", "authSecret": "ngc-api"}
    return {
        "source": {"ngc": {**source, "model": model}},
        "storage": {"pvc": {"create": True, "size": "50Gi"}},
    }


async def test_an_ngc_source_runs_the_nim_image_and_a_nimservice_picks_a_profile(
    e2e: E2E,
) -> None:
    """NGC and NIM images cannot be reached here: the Job's pod is played (exit 0, no result
    of ours, as NIM's `download-to-cache` writes none) and the Deployment is checked, not run."""
    await create_cache(e2e, "nim", ngc_spec(profiles=["p1", "p2"]))
    missing = await cache_where(e2e, "nim", "Failed")
    assert condition(missing, "Failed")["reason"] == "SecretNotFound"
    assert "NGC_API_KEY" in condition(missing, "Failed")["message"]

    key = base64.b64encode(b"nvapi-test").decode()
    await e2e.api.create(
        SECRETS, e2e.namespace, {"metadata": {"name": "ngc-api"}, "data": {"NGC_API_KEY": key}}
    )
    job = await e2e.child(JOBS, "nim-download")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert (container["image"], container["command"]) == (NIM_IMAGE, ["download-to-cache"])
    assert container["args"] == ["--profiles", "p1", "p2"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NIM_CACHE_PATH"]["value"] == "/model-store"
    assert env["NGC_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "ngc-api",
        "key": "NGC_API_KEY",
    }
    await download_ends(e2e.api, e2e.namespace, "nim-download", exit_code=0, message="done")
    ready = await cache_where(e2e, "nim", "Ready")
    assert ready["status"]["profiles"] == [{"name": "p1"}, {"name": "p2"}]
    assert ready["status"]["model"] == {"name": NIM_IMAGE}

    await e2e.create("llm", cpu_spec(storage={"nimCache": {"name": "nim", "profile": "p2"}}))
    deployment = await e2e.child(DEPLOYMENTS, "llm")
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    served = {e["name"]: e.get("value") for e in server["env"]}
    assert (served["NIM_MODEL_PROFILE"], served["NIM_CACHE_PATH"]) == ("p2", "/model-store")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == "model-store"]
    assert volume["persistentVolumeClaim"]["claimName"] == "nim-pvc"

    await e2e.create("other", cpu_spec(storage={"nimCache": {"name": "nim", "profile": "p3"}}))
    refused = await e2e.status_where(
        "other",
        lambda o: condition(o, "Failed").get("reason") == "NIMCacheProfileNotFound",
        "profile not cached",
    )
    assert '"p3"' in condition(refused, "Failed")["message"]
    assert await e2e.get(DEPLOYMENTS, "other") is None


async def test_a_dataset_cache_is_no_model_for_a_nimservice(e2e: E2E) -> None:
    spec = cache_spec(datasetName="rajpurkar/squad")
    del spec["source"]["hf"]["modelName"]  # a dataset instead of the model
    await create_cache(e2e, "squad", spec)
    job = await e2e.child(JOBS, "squad-download")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--dataset", "rajpurkar/squad"]
    await e2e.create("llm", cpu_spec(storage={"nimCache": {"name": "squad"}}))
    failed = await e2e.status_where(
        "llm", lambda o: condition(o, "Failed").get("reason") == "NIMCacheHoldsDataset", "dataset"
    )
    assert 'NIMCache "squad" holds a dataset' in condition(failed, "Failed")["message"]
    assert await e2e.get(DEPLOYMENTS, "llm") is None


async def test_a_nimservice_waits_for_its_cache_then_mounts_it_read_only(e2e: E2E) -> None:
    await create_cache(e2e, "models", cache_spec())
    await e2e.create("llm", cpu_spec(storage={"nimCache": {"name": "models"}}))

    waiting = await e2e.status_where(
        "llm", lambda o: condition(o, "Ready").get("reason") == "NIMCacheNotReady", "waiting"
    )
    assert 'NIMCache "models"' in condition(waiting, "Ready")["message"]
    assert condition(waiting, "Failed")["status"] == "False"
    assert waiting["status"]["state"] == "Pending"
    assert await e2e.get(DEPLOYMENTS, "llm") is None

    await e2e.child(JOBS, "models-download")
    await download_ends(
        e2e.api, e2e.namespace, "models-download", exit_code=0, message=json.dumps(SUCCESS)
    )
    deployment = await e2e.child(DEPLOYMENTS, "llm")
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "model-store"]
    assert volume["persistentVolumeClaim"] == {"claimName": "models-pvc", "readOnly": True}
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "model-store"]
    assert mount == {
        "name": "model-store",
        "mountPath": "/model-store",
        "readOnly": True,
        "subPath": "smollm",
    }
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NIM_MODEL_NAME"] == "/model-store/models/HuggingFaceTB--SmolLM2-135M"
    assert env["NIM_CACHE_PATH"] == "/tmp/nim-cache"
    await e2e.status_where(
        "llm", lambda o: condition(o, "Ready").get("reason") != "NIMCacheNotReady", "not waiting"
    )


async def test_a_missing_cache_is_named_in_a_condition(e2e: E2E) -> None:
    await e2e.create("orphan", cpu_spec(storage={"nimCache": {"name": "nowhere"}}))
    failed = await e2e.status_where(
        "orphan", lambda o: condition(o, "Failed").get("reason") == "NIMCacheNotFound", "missing"
    )
    assert 'storage.nimCache.name "nowhere" not found' in condition(failed, "Failed")["message"]
    assert await e2e.get(DEPLOYMENTS, "orphan") is None
    assert e2e.operator.alive()
    nim = await e2e.get(NIMSERVICES, "orphan")
    assert nim is not None
