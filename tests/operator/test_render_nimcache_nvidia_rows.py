"""The last NIMCache fields of NVIDIA's CRD, rendered: an `ngc` source without authSecret,
`dataStore.revision` (and NVIDIA's older checkpointName), `storage.pvc.annotations`, no
`storage.pvc` at all, `initContainers`, and a status NVIDIA's operator wrote. Pure functions
only, no cluster (on the emulator: test_nvidia_shaped's llm-nimcache-ngc-keyless.yaml and
test_nimcache_nvidia_status_e2e.py).
"""

from __future__ import annotations

from typing import Any

from nim_operator.conditions import Problem
from nim_operator.models_nimcache import NIMCacheSpec
from nim_operator.nimcache_status import CacheObservation, compute_cache_status
from nim_operator.render.nimcache_job import CacheOwner, render_cache_pvc, render_download_job

OWNER = CacheOwner(name="llama", namespace="models", uid="uid-1")
NIM_IMAGE = "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3"
DATA_STORE = {
    "endpoint": "http://nemo-data-store.nemo:3000/v1/hf",
    "namespace": "team",
    "authSecret": "ds-token",
    "modelPuller": "nimstack/nim-server:0.1.0",
    "modelName": "m",
}
CREATED = {"pvc": {"create": True, "size": "50Gi"}}
BUSYBOX = {"repository": "busybox", "tag": "1.36"}


def cache_spec(source: dict[str, Any], **overrides: Any) -> NIMCacheSpec:
    return NIMCacheSpec.from_body({"source": source, "storage": CREATED, **overrides})


def pod_spec(spec: NIMCacheSpec) -> dict[str, Any]:
    return dict(render_download_job(OWNER, spec)["spec"]["template"]["spec"])


def download(spec: NIMCacheSpec) -> dict[str, Any]:
    return dict(pod_spec(spec)["containers"][0])


class TestNGCWithoutKey:
    def test_no_auth_secret_is_no_ngc_api_key_and_no_secret_to_check(self) -> None:
        spec = cache_spec({"ngc": {"modelPuller": NIM_IMAGE, "model": {"profiles": ["p1"]}}})
        assert download(spec)["env"] == [
            {"name": "NIM_CACHE_PATH", "value": "/model-store"},
            {"name": "NGC_HOME", "value": "/model-store/ngc"},
            {"name": "HF_HOME", "value": "/model-store/huggingface"},
        ]
        assert download(spec)["args"] == ["--profiles", "p1"]
        assert spec.auth_secret() is None

    def test_an_empty_auth_secret_is_none(self) -> None:
        spec = cache_spec({"ngc": {"modelPuller": NIM_IMAGE, "authSecret": ""}})
        assert "NGC_API_KEY" not in {e["name"] for e in download(spec)["env"]}
        assert spec.auth_secret() is None

    def test_a_named_one_is_the_key_and_is_checked(self) -> None:
        spec = cache_spec({"ngc": {"modelPuller": NIM_IMAGE, "authSecret": "ngc-api"}})
        (key,) = [e for e in download(spec)["env"] if e["name"] == "NGC_API_KEY"]
        assert key["valueFrom"] == {"secretKeyRef": {"name": "ngc-api", "key": "NGC_API_KEY"}}
        assert spec.auth_secret() == ("source.ngc.authSecret", "ngc-api", "NGC_API_KEY")


class TestDataStoreRevision:
    def test_revision_is_the_download_revision(self) -> None:
        spec = cache_spec({"dataStore": {**DATA_STORE, "revision": "v2"}})
        assert download(spec)["args"][-4:] == ["--model", "team/m", "--revision", "v2"]

    def test_a_dataset_revision_too(self) -> None:
        source = {**DATA_STORE, "modelName": None, "datasetName": "chats", "revision": "r1"}
        args = download(cache_spec({"dataStore": source}))["args"]
        assert args[-4:] == ["--dataset", "team/chats", "--revision", "r1"]

    def test_the_same_checkpoint_name_and_revision_are_one_revision(self) -> None:
        source = {**DATA_STORE, "revision": "step-5", "checkpointName": "step-5"}
        args = download(cache_spec({"dataStore": source}))["args"]
        assert args.count("--revision") == 1
        assert args[-2:] == ["--revision", "step-5"]

    def test_the_revision_changes_the_job_digest(self) -> None:
        digests = {
            render_download_job(OWNER, cache_spec({"dataStore": {**DATA_STORE, **extra}}))[
                "metadata"
            ]["annotations"]["nimstack.dev/spec-digest"]
            for extra in ({}, {"revision": "v2"}, {"revision": "v3"})
        }
        assert len(digests) == 3


class TestClaim:
    def test_annotations_go_on_the_created_claim(self) -> None:
        storage = {"pvc": {**CREATED["pvc"], "annotations": {"b": "2", "a": "1"}}}
        claim = render_cache_pvc(OWNER, cache_spec({"dataStore": DATA_STORE}, storage=storage))
        assert claim is not None
        assert claim["metadata"]["annotations"] == {"a": "1", "b": "2"}
        assert claim["metadata"]["ownerReferences"][0]["uid"] == "uid-1"

    def test_no_annotations_key_without_them(self) -> None:
        claim = render_cache_pvc(OWNER, cache_spec({"dataStore": DATA_STORE}))
        assert claim is not None
        assert "annotations" not in claim["metadata"]

    def test_without_storage_pvc_the_job_fills_the_existing_name_pvc(self) -> None:
        for storage in ({}, {"pvc": {"subPath": "m"}}):
            spec = cache_spec({"dataStore": DATA_STORE}, storage=storage)
            assert render_cache_pvc(OWNER, spec) is None
            (volume,) = [v for v in pod_spec(spec)["volumes"] if v["name"] == "model-store"]
            assert volume["persistentVolumeClaim"] == {"claimName": "llama-pvc"}
            assert spec.pvc_name(OWNER.name) == "llama-pvc"
        mount = download(spec)["volumeMounts"][0]
        assert mount == {"name": "model-store", "mountPath": "/model-store", "subPath": "m"}


class TestInitContainers:
    def spec(self, **extra: Any) -> NIMCacheSpec:
        init = [
            {
                "name": "fetch",
                "image": {**BUSYBOX, "pullPolicy": "IfNotPresent", "pullSecrets": ["mirror"]},
                "command": ["sh", "-c"],
                "args": ["cp -r /seed/. /model-store/"],
                "env": [{"name": "MODE", "value": "copy"}],
                "workingDir": "/seed",
            },
            {"name": "check", "image": {**BUSYBOX, "pullSecrets": ["registry", "mirror"]}},
        ]
        source = {"dataStore": {**DATA_STORE, "pullSecret": "registry"}}
        return cache_spec(
            source,
            initContainers=init,
            proxy={"certConfigMap": "corp-ca"},
            storage={"pvc": {**CREATED["pvc"], "subPath": "sub"}},
            **extra,
        )

    def test_they_run_before_the_download_with_its_mounts_and_only_their_env(self) -> None:
        spec = self.spec()
        pod = pod_spec(spec)
        fetch, check = pod["initContainers"]
        restricted = {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert fetch == {
            "name": "fetch",
            "image": "busybox:1.36",
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c"],
            "args": ["cp -r /seed/. /model-store/"],
            "env": [{"name": "MODE", "value": "copy"}],
            "workingDir": "/seed",
            "volumeMounts": download(spec)["volumeMounts"],
            "securityContext": restricted,
        }
        mounts = {m["name"]: m for m in fetch["volumeMounts"]}
        assert mounts["model-store"]["subPath"] == "sub"
        assert mounts["proxy-ca"]["readOnly"] is True
        # No pullPolicy of its own and none to inherit (a NIMCache has no image field).
        assert "imagePullPolicy" not in check
        assert "env" not in check  # the download's HF_TOKEN is not copied

    def test_their_pull_secrets_join_the_sources_once_each(self) -> None:
        assert pod_spec(self.spec())["imagePullSecrets"] == [
            {"name": "registry"},
            {"name": "mirror"},
        ]

    def test_none_is_no_key(self) -> None:
        assert "initContainers" not in pod_spec(cache_spec({"dataStore": DATA_STORE}))


class TestNVIDIAStatusAdopted:
    def test_our_status_replaces_nvidias_state_and_conditions(self) -> None:
        previous = {
            "state": "PVC-Created",
            "type": "model-free",
            "conditions": [
                {
                    "type": "NIM_CACHE_PVC_CREATED",
                    "status": "True",
                    "reason": "PVCCreated",
                    "message": "",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                }
            ],
        }
        obs = CacheObservation(
            generation=3,
            pvc="llama-pvc",
            job_name="llama-download",
            problem=Problem("PVCNotFound", "no claim"),
        )
        status = compute_cache_status(obs, previous, now="2026-01-01T00:00:00Z")
        assert status["state"] == "Failed"
        assert "type" not in status  # cleared by the patch that writes this (nimcache.py)
        assert [c["type"] for c in status["conditions"]] == ["Ready", "Failed"]
