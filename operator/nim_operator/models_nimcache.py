"""Pydantic models of the NIMCache custom resource: a model downloaded once into a PVC.

These mirror `crds/nimcache.yaml` field for field (tests/operator/test_crd_models_sync.py).
Field names follow NVIDIA's NIMCache, and every source NVIDIA's accepts is honoured:

- `hf` and `dataStore` (NeMo Data Store's Hugging Face-compatible API) run the nimstack server
  image's `nim-serve download`, for a model or a dataset repository;
- `ngc` runs NVIDIA's NIM image itself with its `download-to-cache` command, as NVIDIA's
  operator does. NIM images and NGC cannot run in this project's tests: that Job is checked as
  rendered (tests/operator/test_render_nimcache_sources.py) and through the reconcile path.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from nim_operator.models import (
    ClaimSpec,
    ComputeResources,
    Condition,
    EnvVar,
    ExtraContainers,
    Quantity,
    StringMap,
    Toleration,
    _Model,
)

__all__ = [
    "ALL_PROFILES",
    "CACHE_NAME_MAX_LENGTH",
    "DATA_STORE_REVISION_CONFLICT",
    "DOWNLOAD_CONTAINER_NAME",
    "HOST_PATH_REFUSED",
    "INIT_CONTAINER_NAMES",
    "NVIDIA_ONLY_STATES",
    "CacheCertConfig",
    "CachePVC",
    "CacheProxy",
    "CacheResources",
    "CacheSource",
    "CacheStorage",
    "CachedModel",
    "CachedProfile",
    "DataStoreSource",
    "GPUSelector",
    "HFSource",
    "HubDownload",
    "NGCModel",
    "NGCSource",
    "NIMCacheSpec",
    "NIMCacheStatus",
    "cache_name_problem",
]

# The Job is `<name>-download` and its name is also a label value (63 characters at most).
CACHE_NAME_MAX_LENGTH = 54
# NVIDIA's profile name for "every profile of the image" (`download-to-cache --all`).
ALL_PROFILES = "all"
# The download container's name in the Job's pod; an init container may not take it.
DOWNLOAD_CONTAINER_NAME = "download"
# The messages below are the CRD's CEL messages too (tests/operator/test_nimcache_crd.py).
DATA_STORE_REVISION_CONFLICT = (
    "spec.source.dataStore.revision and checkpointName (NVIDIA's earlier name for it) differ: "
    "set one of them, or both the same"
)
HOST_PATH_REFUSED = (
    "storage.hostPath is not supported: the download pod runs under the restricted Pod Security "
    "Standard, which forbids hostPath volumes (and a node's directory would tie NIMServices to "
    "that node); use storage.pvc"
)
INIT_CONTAINER_NAMES = (
    "initContainers need unique names other than download (the download container)"
)


def _set(value: str | None) -> bool:
    return bool(value)


class HFSource(_Model):
    """A model or dataset from a Hugging Face-compatible hub, a path in the puller image, or
    the image's default model."""

    endpoint: str | None = None
    namespace: str | None = None
    auth_secret: str | None = None
    model_puller: Annotated[str, Field(min_length=1)]
    pull_secret: str | None = None
    model_name: str | None = None
    dataset_name: str | None = None
    revision: str | None = None

    @model_validator(mode="after")
    def _model_or_dataset(self) -> HFSource:
        if _set(self.model_name) and _set(self.dataset_name):
            raise ValueError("spec.source.hf takes modelName or datasetName, not both")
        return self

    def model_id(self) -> str | None:
        """What `nim-serve download --model` gets: `namespace/modelName`, a path, or None."""
        if not self.model_name:
            return None
        if self.namespace and not self.model_name.startswith("/"):
            return f"{self.namespace}/{self.model_name}"
        return self.model_name

    def dataset_id(self) -> str | None:
        if not self.dataset_name:
            return None
        return f"{self.namespace}/{self.dataset_name}" if self.namespace else self.dataset_name


class GPUSelector(_Model):
    product: str | None = None
    ids: Annotated[list[str], Field(max_length=16)] | None = None


class NGCModel(_Model):
    """Which NIM profiles to cache: by id/name, or by NVIDIA's selectors."""

    profiles: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=64)] | None = (
        None
    )
    precision: str | None = None
    engine: str | None = None
    tensor_parallelism: str | None = None
    qos_profile: str | None = None
    gpus: Annotated[list[GPUSelector], Field(max_length=16)] | None = None
    lora: bool | None = None
    buildable: bool | None = None

    def selectors(self) -> dict[str, str]:
        """The selectors that are set, by their field names, as strings (NVIDIA's tag shape)."""
        found: dict[str, str] = {}
        for key, value in (
            ("engine", self.engine),
            ("precision", self.precision),
            ("tensorParallelism", self.tensor_parallelism),
            ("qosProfile", self.qos_profile),
        ):
            if value:
                found[key] = value
        products = [gpu.product for gpu in self.gpus or [] if gpu.product]
        if products:
            found["gpus"] = ",".join(products)
        for key, flag in (("lora", self.lora), ("buildable", self.buildable)):
            if flag is not None:
                found[key] = str(flag).lower()
        return found


class NGCSource(_Model):
    """A NIM image that downloads its own model profiles from NGC (`download-to-cache`).

    authSecret is optional, as in NVIDIA's newest CRD: NIM LLM 2.0.10 and later download
    models outside the production branch without a key (air-gapped mirrors too)."""

    auth_secret: str | None = None
    model_puller: Annotated[str, Field(min_length=1)]
    pull_secret: str | None = None
    model_endpoint: str | None = None
    model: NGCModel | None = None

    @model_validator(mode="after")
    def _model_or_endpoint(self) -> NGCSource:
        if self.model is not None and self.model_endpoint is not None:
            raise ValueError("spec.source.ngc takes model or modelEndpoint, not both")
        return self

    def profiles(self) -> list[str]:
        return list(self.model.profiles or []) if self.model is not None else []


class DataStoreSource(_Model):
    """NeMo Data Store through its Hugging Face-compatible API (`endpoint` ends in /v1/hf)."""

    endpoint: Annotated[str, Field(min_length=1)]
    namespace: str = "default"
    auth_secret: Annotated[str, Field(min_length=1)]
    model_puller: Annotated[str, Field(min_length=1)]
    pull_secret: str | None = None
    model_name: str | None = None
    # NVIDIA's first dataStore named a model checkpoint; its newest has `revision` (as hf has)
    # for the same thing, a repository revision. Both set must agree.
    checkpoint_name: str | None = None
    dataset_name: str | None = None
    revision: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _model_or_dataset(self) -> DataStoreSource:
        if _set(self.model_name) == _set(self.dataset_name):
            raise ValueError("spec.source.dataStore needs exactly one of modelName, datasetName")
        if _set(self.checkpoint_name) and not _set(self.model_name):
            raise ValueError("spec.source.dataStore.checkpointName needs modelName")
        if self.revision and _set(self.checkpoint_name) and self.revision != self.checkpoint_name:
            raise ValueError(DATA_STORE_REVISION_CONFLICT)
        return self


class HubDownload(_Model):
    """What `nim-serve download` is asked for, whichever hub source it came from."""

    model_puller: str
    pull_secret: str | None = None
    endpoint: str | None = None
    auth_secret: str | None = None
    model: str | None = None
    dataset: str | None = None
    revision: str | None = None


class CacheSource(_Model):
    hf: HFSource | None = None
    ngc: NGCSource | None = None
    data_store: DataStoreSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CacheSource:
        if sum(s is not None for s in (self.hf, self.ngc, self.data_store)) != 1:
            raise ValueError("spec.source needs exactly one of hf, ngc, dataStore")
        return self

    def hub_download(self) -> HubDownload | None:
        """The `nim-serve download` an hf or dataStore source asks for; None for ngc."""
        if self.hf is not None:
            hf = self.hf
            return HubDownload(
                model_puller=hf.model_puller,
                pull_secret=hf.pull_secret,
                endpoint=hf.endpoint,
                auth_secret=hf.auth_secret,
                model=hf.model_id(),
                dataset=hf.dataset_id(),
                revision=hf.revision,
            )
        if self.data_store is not None:
            ds = self.data_store
            name = ds.model_name or ds.dataset_name
            repo = f"{ds.namespace}/{name}" if ds.namespace else name
            return HubDownload(
                model_puller=ds.model_puller,
                pull_secret=ds.pull_secret,
                endpoint=ds.endpoint,
                auth_secret=ds.auth_secret,
                model=repo if ds.model_name else None,
                dataset=repo if ds.dataset_name else None,
                revision=ds.revision or ds.checkpoint_name or None,
            )
        return None

    @property
    def holds_dataset(self) -> bool:
        download = self.hub_download()
        return download is not None and download.dataset is not None


class CachePVC(ClaimSpec):
    """The claim a NIMCache fills: created (and owned), or existing.

    Neither `name` nor `create` is what NVIDIA's operator makes of it: the existing claim
    `<name>-pvc`. `annotations` go on a created claim, as on a NIMService's.
    """

    annotations: StringMap | None = None

    @model_validator(mode="after")
    def _name_or_create(self) -> CachePVC:
        # Replaces ClaimSpec's rule, which refuses neither name nor create.
        if self.create and self.size is None:
            raise ValueError("storage.pvc.size is required when storage.pvc.create is true")
        return self


class CacheStorage(_Model):
    # Optional as at NVIDIA: without it the NIMCache fills the existing claim `<name>-pvc`.
    pvc: CachePVC | None = None
    # NVIDIA's node-local cache: refused (HOST_PATH_REFUSED says why).
    host_path: str | None = None

    @model_validator(mode="after")
    def _no_host_path(self) -> CacheStorage:
        if self.host_path:
            raise ValueError(HOST_PATH_REFUSED)
        return self


class CacheProxy(_Model):
    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: str | None = None
    cert_config_map: str | None = None


class CacheResources(ComputeResources):
    """limits and requests, or NVIDIA's cpu and memory (each both the request and the limit)."""

    cpu: Quantity | None = None
    memory: Quantity | None = None

    def container_resources(self) -> dict[str, dict[str, Quantity]]:
        """The container's limits and requests; an explicit entry wins over cpu or memory."""
        shorthand = {k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v is not None}
        merged = {
            group: dict(sorted({**shorthand, **(explicit or {})}.items()))
            for group, explicit in (("limits", self.limits), ("requests", self.requests))
        }
        return {group: values for group, values in merged.items() if values}


class CacheCertConfig(_Model):
    """NVIDIA's older CA setting: a ConfigMap mounted at mountPath."""

    name: Annotated[str, Field(min_length=1)]
    mount_path: Annotated[str, Field(pattern=r"^/")]


class NIMCacheSpec(_Model):
    """Desired state of a NIMCache."""

    source: CacheSource
    storage: CacheStorage
    resources: CacheResources | None = None
    env: Annotated[list[EnvVar], Field(max_length=256)] | None = None
    runtime_class_name: str | None = None
    tolerations: Annotated[list[Toleration], Field(max_length=64)] | None = None
    node_selector: StringMap | None = None
    user_id: Annotated[int, Field(ge=1, alias="userID")] = 1000
    group_id: Annotated[int, Field(ge=0, alias="groupID")] = 2000
    proxy: CacheProxy | None = None
    cert_config: CacheCertConfig | None = None
    init_containers: ExtraContainers | None = None

    @model_validator(mode="after")
    def _init_container_names(self) -> NIMCacheSpec:
        names = [c.name for c in self.init_containers or []]
        if DOWNLOAD_CONTAINER_NAME in names or len(set(names)) != len(names):
            raise ValueError(INIT_CONTAINER_NAMES)
        return self

    @classmethod
    def from_body(cls, spec: dict[str, Any]) -> NIMCacheSpec:
        return cls.model_validate(spec)

    @property
    def model_puller(self) -> str:
        source = self.source.ngc or self.source.hf or self.source.data_store
        assert source is not None  # exactly one, by the validator
        return source.model_puller

    @property
    def pull_secret(self) -> str | None:
        source = self.source.ngc or self.source.hf or self.source.data_store
        assert source is not None
        return source.pull_secret or None

    def auth_secret(self) -> tuple[str, str, str] | None:
        """(field, Secret name, key the download reads) of the source's credentials, if any."""
        if self.source.ngc is not None:
            if not self.source.ngc.auth_secret:
                return None
            return "source.ngc.authSecret", self.source.ngc.auth_secret, "NGC_API_KEY"
        if self.source.data_store is not None:
            return "source.dataStore.authSecret", self.source.data_store.auth_secret, "HF_TOKEN"
        if self.source.hf is not None and self.source.hf.auth_secret:
            return "source.hf.authSecret", self.source.hf.auth_secret, "HF_TOKEN"
        return None

    @property
    def claim(self) -> CachePVC:
        """storage.pvc, or the existing claim NVIDIA's operator uses without one."""
        return self.storage.pvc or CachePVC()

    def pvc_name(self, cache_name: str) -> str:
        return self.claim.name or f"{cache_name}-pvc"


def cache_name_problem(name: str) -> str | None:
    if len(name) > CACHE_NAME_MAX_LENGTH:
        return (
            f"the NIMCache name must be at most {CACHE_NAME_MAX_LENGTH} characters "
            "because it names the download Job"
        )
    return None


# --- status -------------------------------------------------------------------------------------


class CachedModel(_Model):
    """What the download put in the claim (from its termination message)."""

    name: str | None = None
    served_name: str | None = None
    path: str | None = None
    size_bytes: Annotated[int, Field(ge=0)] | None = None


class CachedProfile(_Model):
    """One NIM profile an ngc source cached, in NVIDIA's status shape."""

    name: str | None = None
    model: str | None = None
    release: str | None = None
    config: StringMap | None = None


# The states this operator writes, then those NVIDIA's writes besides: a status restored from
# NVIDIA's operator is accepted, and replaced by this operator's next run (nimcache.py).
CacheState = Literal[
    "Pending", "InProgress", "Ready", "Failed", "NotReady", "PVC-Created", "Started"
]
NVIDIA_ONLY_STATES = ("NotReady", "PVC-Created", "Started")


class NIMCacheStatus(_Model):
    observed_generation: int | None = None
    state: CacheState | None = None
    # NVIDIA's record of its probe of the NIM image (model-free, native): never written here,
    # cleared by this operator's next run (nimcache.py); declared so that a restore is accepted.
    type: str | None = None
    pvc: str | None = None
    job: str | None = None
    profiles: list[CachedProfile] | None = None
    model: CachedModel | None = None
    conditions: list[Condition] | None = None
