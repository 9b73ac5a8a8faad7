"""Pure pieces of NIMCache support: the Job and claim renderers, the status from a Job, and the
NIMService spec resolved against a Ready NIMCache. No cluster, no I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nim_operator.conditions import Problem
from nim_operator.models import NIMServiceSpec
from nim_operator.models_nimcache import NIMCacheSpec
from nim_operator.nimcache_mount import CACHE_SCRATCH_PATH, cached_model_spec
from nim_operator.nimcache_status import CacheObservation, compute_cache_status, job_outcome
from nim_operator.render.nimcache_job import (
    DIGEST_ANNOTATION,
    CacheOwner,
    render_cache_pvc,
    render_download_job,
)

OWNER = CacheOwner(name="llama", namespace="models", uid="uid-1")
NOW = "2026-01-01T00:00:00Z"


def spec(**overrides: Any) -> NIMCacheSpec:
    hf = {"modelPuller": "nimstack/nim-server:0.1.0", "modelName": "org/m"}
    hf.update(overrides.pop("hf", {}))
    body: dict[str, Any] = {
        "source": {"hf": hf},
        "storage": {"pvc": {"create": True, "size": "10Gi"}},
        **overrides,
    }
    return NIMCacheSpec.from_body(body)


class TestDownloadJob:
    def test_runs_nim_serve_download_into_the_claim(self) -> None:
        job = render_download_job(OWNER, spec(hf={"revision": "v2"}))
        assert job["metadata"]["name"] == "llama-download"
        assert job["metadata"]["ownerReferences"][0]["kind"] == "NIMCache"
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["nim-serve"]
        assert container["args"] == [
            *("download", "--cache-path", "/model-store", "--model", "org/m"),
            *("--revision", "v2"),
        ]
        assert pod["volumes"][0] == {
            "name": "model-store",
            "persistentVolumeClaim": {"claimName": "llama-pvc"},
        }
        assert pod["restartPolicy"] == "Never"
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"

    def test_the_embedded_model_needs_no_model_argument(self) -> None:
        job = render_download_job(OWNER, spec(hf={"modelName": None}))
        assert "--model" not in job["spec"]["template"]["spec"]["containers"][0]["args"]

    def test_restricted_pod_security(self) -> None:
        pod = render_download_job(OWNER, spec(userID=1234, groupID=5678))["spec"]["template"]
        security = pod["spec"]["securityContext"]
        assert security == {
            "runAsNonRoot": True,
            "runAsUser": 1234,
            "runAsGroup": 5678,
            "fsGroup": 5678,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        container = pod["spec"]["containers"][0]["securityContext"]
        assert container == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        }
        assert pod["spec"]["automountServiceAccountToken"] is False

    def test_the_token_only_by_reference_and_the_hub_settings_as_env(self) -> None:
        cache = spec(
            hf={"authSecret": "hf", "endpoint": "https://hub.internal"},
            proxy={"httpsProxy": "http://proxy:3128", "noProxy": ".svc"},
        )
        env = render_download_job(OWNER, cache)["spec"]["template"]["spec"]["containers"][0]["env"]
        by_name = {e["name"]: e for e in env}
        assert by_name["HF_TOKEN"] == {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}},
        }
        assert by_name["HF_ENDPOINT"]["value"] == "https://hub.internal"
        assert by_name["HTTPS_PROXY"]["value"] == "http://proxy:3128"
        assert by_name["NO_PROXY"]["value"] == ".svc"
        assert "HTTP_PROXY" not in by_name

    def test_final_exit_codes_fail_the_job_at_once(self) -> None:
        job = render_download_job(OWNER, spec())["spec"]
        assert job["backoffLimit"] == 3
        fail = job["podFailurePolicy"]["rules"][0]
        assert fail["action"] == "FailJob"
        assert fail["onExitCodes"]["values"] == [10, 11, 12]

    def test_the_pod_template_stays_out_of_the_nimservice_pod_watch(self) -> None:
        labels = render_download_job(OWNER, spec())["spec"]["template"]["metadata"]["labels"]
        assert "app.kubernetes.io/managed-by" not in labels
        assert labels["app.kubernetes.io/name"] == "nim-cache"

    def test_the_digest_follows_the_spec_and_only_the_spec(self) -> None:
        def digest(cache: NIMCacheSpec) -> str:
            annotations = render_download_job(OWNER, cache)["metadata"]["annotations"]
            return str(annotations[DIGEST_ANNOTATION])

        assert digest(spec()) == digest(spec())
        assert digest(spec()) != digest(spec(hf={"revision": "v2"}))

    def test_deterministic(self) -> None:
        cache = spec(nodeSelector={"b": "1", "a": "2"}, resources={"limits": {"memory": "4Gi"}})
        first = json.dumps(render_download_job(OWNER, cache))
        assert first == json.dumps(render_download_job(OWNER, cache))


class TestClaim:
    def test_created_and_owned(self) -> None:
        pvc = render_cache_pvc(
            OWNER, spec(storage={"pvc": {"create": True, "size": "5Gi", "storageClass": "fast"}})
        )
        assert pvc is not None
        assert pvc["metadata"]["name"] == "llama-pvc"
        assert pvc["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert pvc["spec"] == {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "5Gi"}},
            "storageClassName": "fast",
        }

    def test_an_existing_claim_is_not_rendered(self) -> None:
        assert render_cache_pvc(OWNER, spec(storage={"pvc": {"name": "mine"}})) is None


def pod(exit_code: int, message: str, created: str = NOW) -> dict[str, Any]:
    terminated = {"exitCode": exit_code, "message": message}
    status = {"containerStatuses": [{"name": "download", "state": {"terminated": terminated}}]}
    return {"metadata": {"creationTimestamp": created}, "status": status}


def job(*conditions: dict[str, str], active: int = 0) -> dict[str, Any]:
    return {
        "status": {"conditions": [dict(c, status="True") for c in conditions], "active": active}
    }


class TestJobOutcome:
    def test_complete_with_what_was_cached(self) -> None:
        result = {"model": "org/m", "path": "models/org--m", "sizeBytes": 7}
        state, model = job_outcome(job({"type": "Complete"}), [pod(0, json.dumps(result))])
        assert state == "Ready"
        assert model is not None
        assert not isinstance(model, Problem)
        assert (model.name, model.path, model.size_bytes) == ("org/m", "models/org--m", 7)

    def test_the_newest_pod_says_why(self) -> None:
        old = pod(13, json.dumps({"reason": "DownloadFailed", "message": "reset"}), "2026-01-01")
        new = pod(11, json.dumps({"reason": "ModelNotFound", "message": "no org/m"}), "2026-01-02")
        state, why = job_outcome(job({"type": "Failed"}), [old, new])
        assert (state, why) == ("Failed", Problem("ModelNotFound", "no org/m"))

    @pytest.mark.parametrize(
        ("message", "reason"),
        [
            (
                "Container download for pod a/b failed with exit code 10 matching FailJob",
                "AuthFailed",
            ),
            ("Job has reached the specified backoff limit", "BackoffLimitExceeded"),
        ],
    )
    def test_without_pods_the_job_condition_says_why(self, message: str, reason: str) -> None:
        condition = {"type": "Failed", "reason": "BackoffLimitExceeded", "message": message}
        state, why = job_outcome(job(condition), [])
        assert state == "Failed"
        assert isinstance(why, Problem)
        assert why.reason == reason

    def test_oom_is_named(self) -> None:
        oom = pod(137, "")
        oom["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "OOMKilled"
        _, why = job_outcome(job({"type": "Failed"}), [oom])
        assert isinstance(why, Problem)
        assert why.reason == "OOMKilled"

    def test_running_and_pending(self) -> None:
        assert job_outcome(job(active=1), []) == ("InProgress", None)
        assert job_outcome(job(), []) == ("Pending", None)


class TestCacheStatus:
    def test_transition_time_moves_only_with_the_status(self) -> None:
        obs = CacheObservation(generation=2, pvc="p", job_name="j", job=job(active=1))
        first = compute_cache_status(obs, {}, now=NOW)
        assert first["state"] == "InProgress"
        later = compute_cache_status(obs, first, now="2026-01-02T00:00:00Z")
        assert later == first
        assert {c["observedGeneration"] for c in first["conditions"]} == {2}

    def test_a_problem_fails_it_before_any_job(self) -> None:
        problem = Problem("SecretNotFound", "no hf")
        obs = CacheObservation(generation=1, pvc="p", job_name="j", problem=problem)
        status = compute_cache_status(obs, {}, now=NOW)
        assert status["state"] == "Failed"
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert (failed["status"], failed["reason"]) == ("True", "SecretNotFound")


def service(**storage: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate(
        {
            "image": {"repository": "r", "tag": "t"},
            "storage": {"nimCache": {"name": "c"}, **storage},
        }
    )


def cache(state: str = "Ready", **status: Any) -> dict[str, Any]:
    body = {
        "state": state,
        "pvc": "c-pvc",
        "observedGeneration": 1,
        "model": {"path": "models/org--m"},
        **status,
    }
    return {
        "metadata": {"generation": 1},
        "spec": {"storage": {"pvc": {"subPath": "sub"}}},
        "status": body,
    }


class TestCachedModelSpec:
    def test_ready_mounts_the_claim_read_only_and_points_at_the_model(self) -> None:
        mounted = cached_model_spec(service(), cache(), namespace="ns")
        assert isinstance(mounted, NIMServiceSpec)
        assert mounted.storage.nim_cache is None
        assert mounted.storage.read_only is True
        assert mounted.storage.pvc is not None
        assert (mounted.storage.pvc.name, mounted.storage.pvc.sub_path) == ("c-pvc", "sub")
        assert mounted.model is not None
        assert mounted.model.name == "/model-store/models/org--m"
        assert mounted.env is not None
        assert (mounted.env[0].name, mounted.env[0].value) == ("NIM_CACHE_PATH", CACHE_SCRATCH_PATH)

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (None, "NIMCacheNotFound"),
            (cache("InProgress"), "NIMCacheNotReady"),
            (cache(observedGeneration=0), "NIMCacheNotReady"),  # a status of an older spec
            (
                cache("Failed", conditions=[{"type": "Failed", "reason": "AuthFailed"}]),
                "NIMCacheFailed",
            ),
            (cache(model={}), "NIMCacheFailed"),
        ],
    )
    def test_otherwise_why_not(self, body: dict[str, Any] | None, reason: str) -> None:
        problem = cached_model_spec(service(), body, namespace="ns")
        assert isinstance(problem, Problem)
        assert problem.reason == reason
        assert '"c"' in problem.message
