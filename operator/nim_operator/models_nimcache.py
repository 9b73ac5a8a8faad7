"""Pydantic models of the NIMCache custom resource: a model downloaded once into a PVC.

These mirror `crds/nimcache.yaml` field for field (tests/operator/test_crd_models_sync.py).
Field names follow NVIDIA's NIMCache. Sources our server image cannot fill (`ngc`, `dataStore`,
a dataset, custom CA certificates) are accepted by the schema's shape so that NVIDIA's manifests
parse, then refused by CEL and here with the same messages: never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from nim_operator.models import (
    ClaimSpec,
    ComputeResources,
    Condition,
    StringMap,
    Toleration,
    _Model,
)

__all__ = [
    "CACHE_NAME_MAX_LENGTH",
    "CachePVC",
    "CacheProxy",
    "CacheSource",
    "CacheStorage",
    "CachedModel",
    "HFSource",
    "NIMCacheSpec",
    "NIMCacheStatus",
    "cache_name_problem",
]

# The Job is `<name>-download` and its name is also a label value (63 characters at most).
CACHE_NAME_MAX_LENGTH = 54

UNSUPPORTED_NGC = (
    "spec.source.ngc is not supported: NGC model profiles need NVIDIA's NIM images; "
    "use spec.source.hf with a Hugging Face model id"
)
UNSUPPORTED_DATA_STORE = (
    "spec.source.dataStore is not supported: use spec.source.hf with endpoint set to the "
    "data store's Hugging Face-compatible API"
)
UNSUPPORTED_DATASET = (
    "spec.source.hf.datasetName is not supported: a NIMCache here holds a model for a NIMService"
)
UNSUPPORTED_CERTS = (
    "spec.certConfig and spec.proxy.certConfigMap are not supported: the download uses the "
    "image's CA bundle"
)


class HFSource(_Model):
    """A model from a Hugging Face-compatible hub, a path in the puller image, or its default."""

    endpoint: str | None = None
    namespace: str | None = None
    auth_secret: str | None = None
    model_puller: Annotated[str, Field(min_length=1)]
    pull_secret: str | None = None
    model_name: str | None = None
    dataset_name: str | None = None
    revision: str | None = None

    def model_id(self) -> str | None:
        """What `nim-serve download --model` gets: `namespace/modelName`, a path, or None."""
        if not self.model_name:
            return None
        if self.namespace and not self.model_name.startswith("/"):
            return f"{self.namespace}/{self.model_name}"
        return self.model_name


class CacheSource(_Model):
    hf: HFSource | None = None
    # NVIDIA's shapes, kept free-form: they are refused whole, whatever they hold.
    ngc: dict[str, Any] | None = None
    data_store: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_usable_source(self) -> CacheSource:
        if sum(s is not None for s in (self.hf, self.ngc, self.data_store)) != 1:
            raise ValueError("spec.source needs exactly one of hf, ngc, dataStore")
        if self.ngc is not None:
            raise ValueError(UNSUPPORTED_NGC)
        if self.data_store is not None:
            raise ValueError(UNSUPPORTED_DATA_STORE)
        if self.hf is not None and self.hf.dataset_name:
            raise ValueError(UNSUPPORTED_DATASET)
        return self


CachePVC = ClaimSpec  # the same fields and rules as a NIMService's, less annotations


class CacheStorage(_Model):
    pvc: CachePVC


class CacheProxy(_Model):
    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: str | None = None
    cert_config_map: str | None = None


class NIMCacheSpec(_Model):
    """Desired state of a NIMCache."""

    source: CacheSource
    storage: CacheStorage
    resources: ComputeResources | None = None
    tolerations: Annotated[list[Toleration], Field(max_length=64)] | None = None
    node_selector: StringMap | None = None
    user_id: Annotated[int, Field(ge=1, alias="userID")] = 1000
    group_id: Annotated[int, Field(ge=0, alias="groupID")] = 2000
    proxy: CacheProxy | None = None
    cert_config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _no_custom_certificates(self) -> NIMCacheSpec:
        if self.cert_config is not None or (self.proxy and self.proxy.cert_config_map):
            raise ValueError(UNSUPPORTED_CERTS)
        return self

    @classmethod
    def from_body(cls, spec: dict[str, Any]) -> NIMCacheSpec:
        return cls.model_validate(spec)

    @property
    def hf(self) -> HFSource:
        assert self.source.hf is not None  # the only source the validator lets through
        return self.source.hf

    def pvc_name(self, cache_name: str) -> str:
        return self.storage.pvc.name or f"{cache_name}-pvc"


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


class NIMCacheStatus(_Model):
    observed_generation: int | None = None
    state: Literal["Pending", "InProgress", "Ready", "Failed"] | None = None
    pvc: str | None = None
    job: str | None = None
    model: CachedModel | None = None
    conditions: list[Condition] | None = None
