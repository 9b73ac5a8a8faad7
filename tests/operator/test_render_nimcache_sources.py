"""NVIDIA's other NIMCache sources and CA settings, rendered: `ngc`, `dataStore`, a dataset, and
`certConfig` / `proxy.certConfigMap`; their status; a NIMService on such a cache, and
`storage.nimCache.profile`. Pure functions only, no cluster.

The `ngc` Job runs NVIDIA's NIM image, which cannot run here (no NGC access, no NIM images):
its command line and environment are checked exactly, as NVIDIA's operator renders them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from nim_operator.conditions import Problem
from nim_operator.models import NIMServiceSpec
from nim_operator.models_nimcache import NIMCacheSpec
from nim_operator.nimcache_mount import CACHE_SCRATCH_PATH, cached_model_spec
from nim_operator.nimcache_status import CacheObservation, compute_cache_status
from nim_operator.render.nimcache_job import CacheOwner, render_download_job
from nim_operator.render.nimcache_ngc import asked_profiles

OWNER = CacheOwner(name="llama", namespace="models", uid="uid-1")
NOW = "2026-01-01T00:00:00Z"
NIM_IMAGE = "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3"
NGC_KEY = {
    "name": "NGC_API_KEY",
    "valueFrom": {"secretKeyRef": {"name": "ngc-api-secret", "key": "NGC_API_KEY"}},
}
NIM_LAYOUT = [
    {"name": "NIM_CACHE_PATH", "value": "/model-store"},
    {"name": "NGC_HOME", "value": "/model-store/ngc"},
    {"name": "HF_HOME", "value": "/model-store/huggingface"},
    NGC_KEY,
]


def cache_spec(source: dict[str, Any], **overrides: Any) -> NIMCacheSpec:
    body = {"source": source, "storage": {"pvc": {"create": True, "size": "50Gi"}}, **overrides}
    return NIMCacheSpec.from_body(body)


def ngc(**fields: Any) -> dict[str, Any]:
    source = {"modelPuller": NIM_IMAGE, "pullSecret": "ngc-secret", "authSecret": "ngc-api-secret"}
    return {"ngc": {**source, **fields}}


def container(spec: NIMCacheSpec) -> dict[str, Any]:
    return dict(render_download_job(OWNER, spec)["spec"]["template"]["spec"]["containers"][0])


def pod_spec(spec: NIMCacheSpec) -> dict[str, Any]:
    return dict(render_download_job(OWNER, spec)["spec"]["template"]["spec"])


class TestNGCJob:
    def test_explicit_profiles_run_download_to_cache_with_them(self) -> None:
        spec = cache_spec(ngc(model={"profiles": ["tensorrt_llm-h100-fp8-tp1", "vllm-bf16-tp1"]}))
        nim = container(spec)
        assert nim["image"] == NIM_IMAGE
        assert nim["command"] == ["download-to-cache"]
        assert nim["args"] == ["--profiles", "tensorrt_llm-h100-fp8-tp1", "vllm-bf16-tp1"]
        assert nim["env"] == NIM_LAYOUT
        assert {"name": "model-store", "mountPath": "/model-store"} in nim["volumeMounts"]
        assert pod_spec(spec)["imagePullSecrets"] == [{"name": "ngc-secret"}]

    def test_all_profiles(self) -> None:
        spec = cache_spec(ngc(model={"profiles": ["all"]}))
        assert container(spec)["args"] == ["--all"]

    def test_selectors_only_leave_the_choice_to_nim(self) -> None:
        spec = cache_spec(ngc(model={"engine": "vllm", "tensorParallelism": "2"}))
        nim = container(spec)
        assert (nim["command"], nim["args"]) == (["download-to-cache"], [])
        assert nim["env"] == NIM_LAYOUT

    def test_a_model_endpoint_is_the_model_a_multi_model_nim_caches(self) -> None:
        spec = cache_spec(ngc(modelEndpoint="ngc://nim/meta/llama-3.1-8b-instruct"))
        nim = container(spec)
        assert nim["args"] == []
        assert nim["env"] == [
            *NIM_LAYOUT,
            {"name": "NIM_MODEL_NAME", "value": "ngc://nim/meta/llama-3.1-8b-instruct"},
        ]

    def test_restricted_pod_security_without_a_read_only_root(self) -> None:
        spec = cache_spec(ngc(), userID=1000, groupID=2000)
        assert container(spec)["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": False,
            "runAsNonRoot": True,
        }
        pod = pod_spec(spec)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False

    def test_nim_exit_codes_are_not_read_as_nim_serves(self) -> None:
        rules = render_download_job(OWNER, cache_spec(ngc()))["spec"]["podFailurePolicy"]["rules"]
        assert rules == [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]

    def test_the_profiles_are_part_of_the_digest(self) -> None:
        def digest(profiles: list[str]) -> str:
            job = render_download_job(OWNER, cache_spec(ngc(model={"profiles": profiles})))
            return str(job["metadata"]["annotations"]["nimstack.dev/spec-digest"])

        assert digest(["a"]) != digest(["b"])


DATA_STORE = {
    "endpoint": "http://nemo-data-store.nemo:3000/v1/hf",
    "namespace": "team",
    "authSecret": "ds-token",
    "modelPuller": "nimstack/nim-server:0.1.0",
    "pullSecret": "registry",
}


class TestHubSources:
    def test_a_data_store_model_is_a_hub_download_from_its_hf_api(self) -> None:
        spec = cache_spec({"dataStore": {**DATA_STORE, "modelName": "llama-lora"}})
        download = container(spec)
        assert download["command"] == ["nim-serve"]
        assert download["args"] == [
            *("download", "--cache-path", "/model-store", "--model", "team/llama-lora"),
        ]
        env = {e["name"]: e for e in download["env"]}
        assert env["HF_ENDPOINT"]["value"] == "http://nemo-data-store.nemo:3000/v1/hf"
        assert env["HF_TOKEN"]["valueFrom"] == {
            "secretKeyRef": {"name": "ds-token", "key": "HF_TOKEN"}
        }
        assert pod_spec(spec)["imagePullSecrets"] == [{"name": "registry"}]

    def test_a_data_store_checkpoint_is_the_revision(self) -> None:
        source = {"dataStore": {**DATA_STORE, "modelName": "m", "checkpointName": "step-500"}}
        assert container(cache_spec(source))["args"][-4:] == [
            *("--model", "team/m", "--revision", "step-500"),
        ]

    @pytest.mark.parametrize(
        ("source", "dataset"),
        [
            ({"dataStore": {**DATA_STORE, "datasetName": "chats"}}, "team/chats"),
            (
                {
                    "hf": {
                        "modelPuller": "nimstack/nim-server:0.1.0",
                        "namespace": "rajpurkar",
                        "datasetName": "squad",
                    }
                },
                "rajpurkar/squad",
            ),
        ],
        ids=["dataStore", "hf"],
    )
    def test_a_dataset_is_downloaded_as_a_dataset(
        self, source: dict[str, Any], dataset: str
    ) -> None:
        spec = cache_spec(source)
        assert spec.source.holds_dataset
        args = container(spec)["args"]
        assert args == ["download", "--cache-path", "/model-store", "--dataset", dataset]


class TestCABundle:
    def test_proxy_cert_config_map_is_mounted_and_pointed_at(self) -> None:
        spec = cache_spec(
            ngc(),
            proxy={"httpsProxy": "http://proxy:3128", "certConfigMap": "corp-ca"},
        )
        nim = container(spec)
        assert {
            "name": "proxy-ca",
            "mountPath": "/etc/nim/proxy-ca",
            "readOnly": True,
        } in nim["volumeMounts"]
        assert nim["env"][len(NIM_LAYOUT) :] == [
            {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
            {"name": "https_proxy", "value": "http://proxy:3128"},
            {"name": "SSL_CERT_FILE", "value": "/etc/nim/proxy-ca/ca-bundle.crt"},
            {"name": "REQUESTS_CA_BUNDLE", "value": "/etc/nim/proxy-ca/ca-bundle.crt"},
            {"name": "NIM_SDK_USE_NATIVE_TLS", "value": "1"},
        ]
        assert {
            "name": "proxy-ca",
            "configMap": {
                "name": "corp-ca",
                "items": [{"key": "ca-bundle.crt", "path": "ca-bundle.crt"}],
            },
        } in pod_spec(spec)["volumes"]

    def test_cert_config_mounts_at_its_own_path(self) -> None:
        hf = {"hf": {"modelPuller": "nimstack/nim-server:0.1.0", "modelName": "org/m"}}
        spec = cache_spec(hf, certConfig={"name": "corp-ca", "mountPath": "/etc/ssl/corp/"})
        download = container(spec)
        assert {
            "name": "proxy-ca",
            "mountPath": "/etc/ssl/corp",
            "readOnly": True,
        } in download["volumeMounts"]
        env = {e["name"]: e.get("value") for e in download["env"]}
        assert env["REQUESTS_CA_BUNDLE"] == "/etc/ssl/corp/ca-bundle.crt"
        assert env["SSL_CERT_FILE"] == "/etc/ssl/corp/ca-bundle.crt"
        assert "NIM_SDK_USE_NATIVE_TLS" not in env  # nim-serve is Python: OpenSSL reads them
        volume = next(v for v in pod_spec(spec)["volumes"] if v["name"] == "proxy-ca")
        assert volume["configMap"]["name"] == "corp-ca"

    def test_proxy_cert_config_map_wins_over_cert_config(self) -> None:
        spec = cache_spec(
            ngc(),
            certConfig={"name": "old-ca", "mountPath": "/certs"},
            proxy={"certConfigMap": "new-ca"},
        )
        volumes = [v for v in pod_spec(spec)["volumes"] if "configMap" in v]
        assert [v["configMap"]["name"] for v in volumes] == ["new-ca"]

    def test_none_without_a_bundle(self) -> None:
        spec = cache_spec(ngc(), proxy={"httpProxy": "http://p:1", "certConfigMap": ""})
        assert not any("configMap" in v for v in pod_spec(spec)["volumes"])
        assert "SSL_CERT_FILE" not in {e["name"] for e in container(spec)["env"]}


def completed() -> dict[str, Any]:
    return {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}


class TestNGCStatus:
    def test_ready_lists_the_profiles_asked_for(self) -> None:
        source = cache_spec(ngc(model={"profiles": ["p1", "p2"]})).source.ngc
        assert source is not None
        obs = CacheObservation(
            generation=1,
            pvc="llama-pvc",
            job_name="llama-download",
            job=completed(),
            pods=[{"status": {"containerStatuses": []}}],
            nim_model=NIM_IMAGE,
            nim_profiles=asked_profiles(source),
        )
        status = compute_cache_status(obs, {}, now=NOW)
        assert status["state"] == "Ready"
        assert status["profiles"] == [{"name": "p1"}, {"name": "p2"}]
        assert status["model"] == {"name": NIM_IMAGE}

    def test_selectors_are_reported_as_what_was_asked(self) -> None:
        model = {"engine": "tensorrt_llm", "gpus": [{"product": "h100"}], "lora": False}
        source = cache_spec(ngc(model=model)).source.ngc
        assert source is not None
        (profile,) = asked_profiles(source)
        assert profile.name is None
        assert profile.config == {"engine": "tensorrt_llm", "gpus": "h100", "lora": "false"}

    def test_all_and_no_selectors_list_nothing(self) -> None:
        for model in ({"profiles": ["all"]}, {}):
            source = cache_spec(ngc(model=model)).source.ngc
            assert source is not None
            assert asked_profiles(source) == []

    def test_no_profiles_until_ready(self) -> None:
        source = cache_spec(ngc(model={"profiles": ["p1"]})).source.ngc
        assert source is not None
        running = {"status": {"active": 1}}
        obs = CacheObservation(
            generation=1, pvc="p", job_name="j", job=running, nim_profiles=asked_profiles(source)
        )
        assert "profiles" not in compute_cache_status(obs, {}, now=NOW)

    def test_a_dataset_download_names_the_dataset(self) -> None:
        result = {"dataset": "team/chats", "path": "datasets/team--chats", "sizeBytes": 3}
        terminated = {"exitCode": 0, "message": json.dumps(result)}
        pod = {
            "status": {
                "containerStatuses": [{"name": "download", "state": {"terminated": terminated}}]
            }
        }
        obs = CacheObservation(generation=1, pvc="p", job_name="j", job=completed(), pods=[pod])
        status = compute_cache_status(obs, {}, now=NOW)
        assert status["model"] == {
            "name": "team/chats",
            "path": "datasets/team--chats",
            "sizeBytes": 3,
        }


def service(**nim_cache: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate(
        {
            "image": {"repository": "r", "tag": "t"},
            "storage": {"nimCache": {"name": "c", **nim_cache}},
        }
    )


def ready_cache(source: dict[str, Any], **status: Any) -> dict[str, Any]:
    body = {"state": "Ready", "pvc": "c-pvc", "observedGeneration": 1, **status}
    return {"metadata": {"generation": 1}, "spec": {"source": source}, "status": body}


class TestNIMServiceOnSuchACache:
    def test_an_ngc_cache_is_nims_cache_path(self) -> None:
        mounted = cached_model_spec(
            service(profile="p2"),
            ready_cache(ngc(), profiles=[{"name": "p1"}, {"name": "p2"}], model={"name": "x"}),
            namespace="ns",
        )
        assert isinstance(mounted, NIMServiceSpec)
        assert mounted.storage.pvc is not None
        assert mounted.storage.pvc.name == "c-pvc"
        assert mounted.storage.read_only is False  # as the user left storage.readOnly
        assert mounted.model is None or mounted.model.name is None
        assert [(e.name, e.value) for e in mounted.env or []] == [("NIM_MODEL_PROFILE", "p2")]

    def test_a_profile_the_cache_does_not_hold_is_refused(self) -> None:
        problem = cached_model_spec(
            service(profile="p3"), ready_cache(ngc(), profiles=[{"name": "p1"}]), namespace="ns"
        )
        assert isinstance(problem, Problem)
        assert problem.reason == "NIMCacheProfileNotFound"
        assert '"p3"' in problem.message
        assert "p1" in problem.message

    def test_a_profile_on_a_cache_that_names_none_is_passed_on(self) -> None:
        hf = {"hf": {"modelPuller": "nimstack/nim-server:0.1.0", "modelName": "org/m"}}
        mounted = cached_model_spec(
            service(profile="vllm"),
            ready_cache(hf, model={"path": "models/org--m"}),
            namespace="ns",
        )
        assert isinstance(mounted, NIMServiceSpec)
        assert [(e.name, e.value) for e in mounted.env or []] == [
            ("NIM_CACHE_PATH", CACHE_SCRATCH_PATH),
            ("NIM_MODEL_PROFILE", "vllm"),
        ]

    def test_the_users_own_profile_variable_is_kept(self) -> None:
        spec = NIMServiceSpec.model_validate(
            {
                "image": {"repository": "r", "tag": "t"},
                "storage": {"nimCache": {"name": "c", "profile": "p1"}},
                "env": [{"name": "NIM_MODEL_PROFILE", "value": "mine"}],
            }
        )
        mounted = cached_model_spec(spec, ready_cache(ngc()), namespace="ns")
        assert isinstance(mounted, NIMServiceSpec)
        assert [(e.name, e.value) for e in mounted.env or []] == [("NIM_MODEL_PROFILE", "mine")]

    @pytest.mark.parametrize("kind", ["hf", "dataStore"])
    def test_a_cache_holding_a_dataset_fails_the_service(self, kind: str) -> None:
        source = {kind: {"modelPuller": "nimstack/nim-server:0.1.0", "datasetName": "squad"}}
        problem = cached_model_spec(
            service(), ready_cache(source, model={"path": "datasets/squad"}), namespace="ns"
        )
        assert isinstance(problem, Problem)
        assert problem.reason == "NIMCacheHoldsDataset"
        assert "dataset" in problem.message


class TestNVIDIAJobSettings:
    """NVIDIA's env, runtimeClassName and resources.{cpu, memory} of the caching Job."""

    def test_user_env_follows_and_replaces_the_operators(self) -> None:
        env = [
            {"name": "NIM_CACHE_PATH", "value": "/model-store/nim"},
            {"name": "NGC_API_KEY", "valueFrom": {"secretKeyRef": {"name": "o", "key": "k"}}},
            {"name": "EXTRA", "value": "1"},
        ]
        nim = container(cache_spec(ngc(), env=env))
        assert nim["env"] == [
            {"name": "NGC_HOME", "value": "/model-store/ngc"},
            {"name": "HF_HOME", "value": "/model-store/huggingface"},
            {"name": "NIM_CACHE_PATH", "value": "/model-store/nim"},
            {"name": "NGC_API_KEY", "valueFrom": {"secretKeyRef": {"name": "o", "key": "k"}}},
            {"name": "EXTRA", "value": "1"},
        ]

    def test_runtime_class(self) -> None:
        assert pod_spec(cache_spec(ngc(), runtimeClassName="nvidia"))["runtimeClassName"] == (
            "nvidia"
        )
        assert "runtimeClassName" not in pod_spec(cache_spec(ngc()))

    def test_cpu_and_memory_are_request_and_limit_unless_given_explicitly(self) -> None:
        resources = {"cpu": "2", "memory": "8Gi", "limits": {"memory": "16Gi", "nvidia.com/gpu": 1}}
        assert container(cache_spec(ngc(), resources=resources))["resources"] == {
            "limits": {"cpu": "2", "memory": "16Gi", "nvidia.com/gpu": 1},
            "requests": {"cpu": "2", "memory": "8Gi"},
        }

    def test_no_resources_no_key(self) -> None:
        assert "resources" not in container(cache_spec(ngc(), resources={}))
