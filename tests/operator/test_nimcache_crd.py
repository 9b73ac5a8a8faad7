"""crds/nimcache.yaml and nim_operator.models_nimcache agree, accept every source NVIDIA's
NIMCache accepts, and refuse what is contradictory.

The schema and the models are compared field by field (as test_crd_models_sync does for the
NIMService); every invalid NIMCache below is rejected by the CRD's CEL rules (evaluated with
cel-python, after the schema's defaults, as the API server does) AND by the model with the same
message; the sample passes both.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import celpy
import pytest
import yaml
from pydantic import ValidationError

from nim_operator.models import NIMServiceSpec
from nim_operator.models_nimcache import NIMCacheSpec, NIMCacheStatus
from tests.operator.test_crd_cel import apply_defaults, compiled, rules
from tests.operator.test_crd_cel import cel_violations as nimservice_cel_violations
from tests.operator.test_crd_models_sync import compare_model
from tests.support.crd_validation import schema_errors

REPO = Path(__file__).parents[2]
CRD = yaml.safe_load((REPO / "crds" / "nimcache.yaml").read_text())
ROOT: dict[str, Any] = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SAMPLE = REPO / "manifests" / "samples" / "nimcache" / "smollm2.yaml"


def cel_violations(obj: dict[str, Any]) -> list[str]:
    defaulted = apply_defaults(ROOT, copy.deepcopy(obj))
    return [
        message
        for rule, message, value in rules(ROOT, defaulted)
        if not compiled(rule).evaluate({"self": celpy.json_to_cel(value)})  # type: ignore[attr-defined]
    ]


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def nimcache(name: str = "llama", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "source": {"hf": {"modelPuller": "nimstack/nim-server:0.1.0", "modelName": "org/m"}},
        "storage": {"pvc": {"create": True, "size": "10Gi"}},
    }
    base.update(spec)
    return {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMCache",
        "metadata": {"name": name},
        "spec": base,
    }


class TestCRDMatchesModels:
    def test_spec(self) -> None:
        assert compare_model(NIMCacheSpec, ROOT["properties"]["spec"], "spec") == []

    def test_status(self) -> None:
        assert compare_model(NIMCacheStatus, ROOT["properties"]["status"], "status") == []

    @pytest.mark.parametrize("field", ["env", "initContainers"])
    def test_copies_of_the_nimservices_schema_match_it(self, field: str) -> None:
        """spec.env and spec.initContainers are the NIMService's, descriptions and the
        initContainers' `download` name rule aside."""
        service = yaml.safe_load((REPO / "crds" / "nimservice.yaml").read_text())
        theirs = service["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ours = without_descriptions(ROOT["properties"]["spec"]["properties"][field])
        ours.pop("x-kubernetes-validations", None)
        assert ours == without_descriptions(theirs["properties"][field])

    def test_installed_with_the_other_crds(self) -> None:
        kustomization = yaml.safe_load((REPO / "crds" / "kustomization.yaml").read_text())
        assert "nimcache.yaml" in kustomization["resources"]


HF = {"modelPuller": "nimstack/nim-server:0.1.0"}
NGC = {
    "modelPuller": "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3",
    "authSecret": "ngc-api-secret",
    "model": {"profiles": ["tensorrt_llm-h100-fp8-tp1-throughput"]},
}
DATA_STORE = {
    "endpoint": "http://nemo-data-store:3000/v1/hf",
    "authSecret": "ds-token",
    "modelPuller": "nimstack/nim-server:0.1.0",
    "modelName": "llama-lora",
}
INVALID = {
    "no source": (
        {"source": {}},
        "spec.source needs exactly one of hf, ngc, dataStore",
    ),
    "two sources": (
        {"source": {"hf": HF, "dataStore": DATA_STORE}},
        "spec.source needs exactly one of hf, ngc, dataStore",
    ),
    "hf model and dataset": (
        {"source": {"hf": {**HF, "modelName": "org/m", "datasetName": "org/d"}}},
        "spec.source.hf takes modelName or datasetName, not both",
    ),
    "ngc model and modelEndpoint": (
        {"source": {"ngc": {**NGC, "modelEndpoint": "ngc://nim/meta/llama"}}},
        "spec.source.ngc takes model or modelEndpoint, not both",
    ),
    "dataStore without a name": (
        {"source": {"dataStore": {**DATA_STORE, "modelName": ""}}},
        "spec.source.dataStore needs exactly one of modelName, datasetName",
    ),
    "dataStore model and dataset": (
        {"source": {"dataStore": {**DATA_STORE, "datasetName": "d"}}},
        "spec.source.dataStore needs exactly one of modelName, datasetName",
    ),
    "dataStore checkpoint of a dataset": (
        {
            "source": {
                "dataStore": {
                    **DATA_STORE,
                    "modelName": "",
                    "datasetName": "d",
                    "checkpointName": "c",
                }
            }
        },
        "spec.source.dataStore.checkpointName needs modelName",
    ),
    "env literal token": (
        {"env": [{"name": "NGC_API_KEY", "value": "nvapi-x"}]},
        "NGC_API_KEY, HF_TOKEN and NIM_API_KEY must come from a Secret",
    ),
    "hostPath": (
        {"storage": {"pvc": {"create": True, "size": "1Gi"}, "hostPath": "/data/nim"}},
        "storage.hostPath is not supported",
    ),
    "pvc created without size": (
        {"storage": {"pvc": {"create": True}}},
        "storage.pvc.size is required when storage.pvc.create is true",
    ),
    "dataStore revision and checkpointName differ": (
        {"source": {"dataStore": {**DATA_STORE, "checkpointName": "step-100", "revision": "main"}}},
        "spec.source.dataStore.revision and checkpointName (NVIDIA's earlier name for it) differ",
    ),
    "an init container named like the download": (
        {"initContainers": [{"name": "download", "image": {"repository": "busybox", "tag": "1"}}]},
        "initContainers need unique names other than download (the download container)",
    ),
}


class TestInvalidNIMCaches:
    @pytest.mark.parametrize(("spec", "message"), INVALID.values(), ids=INVALID.keys())
    def test_cel_and_model_reject_with_the_same_message(
        self, spec: dict[str, Any], message: str
    ) -> None:
        obj = nimcache(**spec)
        assert any(v.startswith(message) for v in cel_violations(obj)), cel_violations(obj)
        stored = apply_defaults(ROOT, copy.deepcopy(obj))
        with pytest.raises(ValidationError) as refused:
            NIMCacheSpec.from_body(stored["spec"])
        assert message in str(refused.value)

    def test_hostpath_is_refused_because_restricted_pods_cannot_mount_it(self) -> None:
        obj = nimcache(storage={"hostPath": "/data/nim"})
        (violation,) = cel_violations(obj)
        assert "restricted Pod Security Standard, which forbids hostPath volumes" in violation
        with pytest.raises(ValidationError, match="forbids hostPath volumes"):
            NIMCacheSpec.from_body(obj["spec"])

    def test_init_containers_with_one_name_are_refused_by_the_model(self) -> None:
        # The API server refuses them as a list keyed by name; the emulator may not.
        busybox = {"image": {"repository": "busybox", "tag": "1"}}
        twice = [{"name": "fetch", **busybox}, {"name": "fetch", **busybox}]
        with pytest.raises(ValidationError, match="initContainers need unique names"):
            NIMCacheSpec.from_body(nimcache(initContainers=twice)["spec"])

    def test_a_long_name_is_refused(self) -> None:
        violations = cel_violations(nimcache(name="x" * 55))
        assert violations == [
            "the NIMCache name must be at most 54 characters because it names the download Job"
        ]

    def test_the_puller_image_is_required(self) -> None:
        spec: dict[str, Any] = {"source": {"hf": {"modelName": "org/m"}}}
        with pytest.raises(ValidationError, match="modelPuller"):
            NIMCacheSpec.from_body(nimcache(**spec)["spec"])
        assert (
            "modelPuller"
            in ROOT["properties"]["spec"]["properties"]["source"]["properties"]["hf"]["required"]
        )


class TestValidNIMCaches:
    def test_the_sample_passes_both_crds(self) -> None:
        cache, service = yaml.safe_load_all(SAMPLE.read_text())
        assert cel_violations(cache) == []
        spec = NIMCacheSpec.from_body(apply_defaults(ROOT, copy.deepcopy(cache))["spec"])
        assert spec.source.hf is not None
        assert spec.source.hf.model_id() is None  # the image's embedded model
        assert nimservice_cel_violations(service) == []
        served = NIMServiceSpec.model_validate(service["spec"])
        assert served.storage.nim_cache is not None
        assert served.storage.nim_cache.name == cache["metadata"]["name"]

    @pytest.mark.parametrize(
        "spec",
        [
            {"source": {"ngc": NGC}},
            {"source": {"ngc": {**NGC, "model": {"engine": "vllm", "lora": True}}}},
            {"source": {"ngc": {k: v for k, v in NGC.items() if k != "model"}}},
            {"source": {"dataStore": DATA_STORE}},
            {"source": {"dataStore": {**DATA_STORE, "checkpointName": "step-100"}}},
            {"source": {"hf": {**HF, "namespace": "rajpurkar", "datasetName": "squad"}}},
            {"certConfig": {"name": "corp-ca", "mountPath": "/etc/ssl/corp"}},
            {"proxy": {"httpsProxy": "http://proxy:3128", "certConfigMap": "corp-ca"}},
            {
                "resources": {"cpu": 2, "memory": "8Gi"},
                "env": [{"name": "NIM_LOG_LEVEL", "value": "DEBUG"}],
                "runtimeClassName": "nvidia",
            },
            {"source": {"ngc": {k: v for k, v in NGC.items() if k != "authSecret"}}},
            {"source": {"ngc": {**NGC, "authSecret": ""}}},
            {"source": {"dataStore": {**DATA_STORE, "revision": "v2"}}},
            {"source": {"dataStore": {**DATA_STORE, "revision": "s", "checkpointName": "s"}}},
            {"storage": {}},
            {"storage": {"pvc": {"subPath": "m"}}},
            {"storage": {"pvc": {"create": True, "size": "1Gi", "annotations": {"a/b": "c"}}}},
            {
                "initContainers": [
                    {
                        "name": "fetch-config",
                        "image": {"repository": "busybox", "tag": "1.36", "pullSecrets": ["r"]},
                        "command": ["sh", "-c"],
                        "args": ["cp /src/* /model-store/"],
                        "env": [{"name": "MODE", "value": "copy"}],
                        "workingDir": "/",
                    }
                ]
            },
        ],
        ids=[
            "ngc profiles",
            "ngc selectors",
            "ngc default profile",
            "dataStore model",
            "dataStore checkpoint",
            "hf dataset",
            "certConfig",
            "proxy certConfigMap",
            "env runtimeClassName resources.cpu/memory",
            "ngc without authSecret",
            "ngc with an empty authSecret",
            "dataStore revision",
            "dataStore revision and the same checkpointName",
            "storage without pvc",
            "pvc neither named nor created",
            "pvc annotations",
            "initContainers",
        ],
    )
    def test_nvidias_other_sources_and_ca_settings_pass_both(self, spec: dict[str, Any]) -> None:
        obj = nimcache(**spec)
        assert cel_violations(obj) == []
        NIMCacheSpec.from_body(apply_defaults(ROOT, copy.deepcopy(obj))["spec"])

    def test_a_data_store_namespace_defaults_as_nvidias_does(self) -> None:
        obj = apply_defaults(ROOT, nimcache(source={"dataStore": DATA_STORE}))
        assert obj["spec"]["source"]["dataStore"]["namespace"] == "default"
        download = NIMCacheSpec.from_body(obj["spec"]).source.hub_download()
        assert download is not None
        assert (download.model, download.dataset) == ("default/llama-lora", None)

    def test_namespace_prefixes_a_hub_model_but_not_a_path(self) -> None:
        hub: dict[str, Any] = {
            "source": {"hf": {**HF, "namespace": "meta-llama", "modelName": "Llama-3.1-8B"}}
        }
        hub_source = NIMCacheSpec.from_body(nimcache(**hub)["spec"]).source.hf
        assert hub_source is not None
        assert hub_source.model_id() == "meta-llama/Llama-3.1-8B"
        path: dict[str, Any] = {
            "source": {"hf": {**HF, "namespace": "x", "modelName": "/models/m.gguf"}}
        }
        path_source = NIMCacheSpec.from_body(nimcache(**path)["spec"]).source.hf
        assert path_source is not None
        assert path_source.model_id() == "/models/m.gguf"


class TestNVIDIAStatus:
    """A status NVIDIA's operator wrote (restored with the object) passes our status schema."""

    STATUS: ClassVar[dict[str, Any]] = {
        "state": "PVC-Created",
        "type": "model-free",
        "pvc": "llama-pvc",
        "profiles": [{"name": "p1", "model": "m", "release": "1.3.3", "config": {"tp": "1"}}],
        "conditions": [
            {
                "type": "NIM_CACHE_PVC_CREATED",
                "status": "True",
                "reason": "PVCCreated",
                "message": "The PVC has been created for caching NIM model",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }

    @pytest.mark.parametrize("state", ["NotReady", "PVC-Created", "Started", "Ready"])
    def test_nvidias_states_and_type_pass_the_schema_and_the_model(self, state: str) -> None:
        status = {**self.STATUS, "state": state}
        obj = {**nimcache(), "status": status}
        assert schema_errors(ROOT, obj, strict=True) == []
        assert NIMCacheStatus.model_validate(status).type == "model-free"

    def test_a_state_of_neither_operator_is_refused(self) -> None:
        obj = {**nimcache(), "status": {**self.STATUS, "state": "Downloading"}}
        assert schema_errors(ROOT, obj, strict=True) != []
