"""Pydantic models of the NIMService custom resource: spec and status.

These mirror `crds/nimservice.yaml` field for field (tests/operator/test_crd_models_sync.py fails
when the two drift apart). Field names follow NVIDIA's NIMService so that its manifests apply here
after changing only `apiVersion`. Attributes are snake_case; the wire names are camelCase aliases.

The cross-field rules the CRD enforces with CEL are repeated as pydantic validators with the same
messages, so a spec that reaches reconcile from an older CRD (or a test) fails the same way.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from nim_operator.models_nvidia_shapes import current_spec

__all__ = [
    "API_KEY_ENV",
    "COMPUTE_DOMAIN_CREATE_OR_NAME",
    "DEFAULT_AUTOSCALING_TARGETS",
    "DEFAULT_MPI_START_TIMEOUT",
    "DEFAULT_RAY_PORT",
    "DNS1035_LABEL",
    "DRA_CLAIMS_UNDECLARED",
    "DRA_SOURCE_REFUSED",
    "DURATION_PATTERN",
    "GPU_RESOURCE",
    "KSERVE_REFUSED",
    "MULTI_NODE_AUTOSCALING_REFUSED",
    "MULTI_NODE_GPUS_PER_POD_CONFLICT",
    "MULTI_NODE_GPU_MISMATCH",
    "MULTI_NODE_MPI_OR_RAY",
    "MULTI_NODE_RAY_PORT_TAKEN",
    "MULTI_NODE_SIZE_CONFLICT",
    "NIM_CACHE_CONFLICT",
    "OPENAI_PORT_CONFLICT",
    "QUANTITY_PATTERN",
    "ROUTER_CONFLICT",
    "ROUTER_INGRESS_CONFLICT",
    "SCALE_TO_ZERO_MULTI_NODE_REFUSED",
    "SECRET_ENV_NAMES",
    "SERVER_CONTAINER_NAME",
    "STORAGE_PVC_SIZE_REQUIRED",
    "STORAGE_PVC_UNUSABLE",
    "APIKeySecret",
    "AdapterVolume",
    "AdaptersSpec",
    "AutoscalingSpec",
    "AutoscalingStatus",
    "ClaimSpec",
    "ComputeDomainNodeStatus",
    "ComputeDomainStatus",
    "ComputeResources",
    "Condition",
    "ContainerClaim",
    "ContainerPort",
    "DRAAttributeSelector",
    "DRAAttributeValue",
    "DRACapacitySelector",
    "DRAClaimCreationSpec",
    "DRADevice",
    "DRAResource",
    "EPPConfig",
    "EmptyDirStorage",
    "EnvVar",
    "EnvVarSource",
    "ExposeSpec",
    "ExtraContainer",
    "FileKeySelector",
    "GPUSpec",
    "HPABehavior",
    "HPAScalingPolicy",
    "HPAScalingRules",
    "HPASpec",
    "ImageSpec",
    "IngressExpose",
    "IngressSpec",
    "LegacyRouterGateway",
    "LegacyRouterSpec",
    "MetricSpec",
    "MetricsSpec",
    "ModelSpec",
    "ModelStatus",
    "MultiNodeComputeDomain",
    "MultiNodeMPI",
    "MultiNodeParallelism",
    "MultiNodeRay",
    "MultiNodeSpec",
    "NIMCacheRef",
    "NIMServiceSpec",
    "NIMServiceStatus",
    "PVCStorage",
    "Probe",
    "ProbeSpec",
    "ProxySpec",
    "ResourceRequirements",
    "RouterGateway",
    "RouterIngress",
    "RouterSpec",
    "ScaleRecord",
    "ScaleSpec",
    "ServiceMonitorSpec",
    "ServiceSpec",
    "StorageSpec",
    "Toleration",
    "dra_pod_claim_name",
    "service_name_problem",
]

# Kubernetes resource.Quantity grammar: a decimal number with an optional binary (Ki..Ei),
# decimal (n, u, m, k, M, G, T, P, E) or exponent suffix. The grammar allows a minus sign, but no
# quantity here (resources, sizes, metric targets) may be negative: the API server would reject
# the child later, so the sign is refused up front.
QUANTITY_PATTERN = (
    r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)"
    r"(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+))?$"
)
# Prometheus-operator Duration: units in descending order, e.g. "30s", "1m30s", "0".
DURATION_PATTERN = r"^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$"
# The NIMService name becomes a Service name, which must be a DNS-1035 label.
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Kubernetes 1.34 (RelaxedEnvironmentVariableValidation, GA): any printable ASCII character but
# '='. The length cap is ours: the CEL rule on every env entry needs bounded strings.
ENV_NAME_PATTERN = r"^[ -<>-~]+$"
GPU_RESOURCE = "nvidia.com/gpu"
# Credentials the operator injects from Secrets (`authSecret`, `apiKeySecret`); they may never be
# given as literal values.
SECRET_ENV_NAMES = ("NGC_API_KEY", "HF_TOKEN", "NIM_API_KEY")
# spec.inferencePlatform: kserve (NVIDIA renders a KServe InferenceService) is not implemented.
# NVIDIA's default time for a multi-node group's workers to join the leader, in seconds.
DEFAULT_MPI_START_TIMEOUT = 300
SCALE_TO_ZERO_MULTI_NODE_REFUSED = (
    "spec.scaleToZeroAfter cannot be combined with spec.multiNode: idleness is measured on the "
    "pods of a Deployment"
)
MULTI_NODE_AUTOSCALING_REFUSED = (
    "spec.multiNode cannot be combined with spec.scale.enabled or spec.autoscaling: "
    "a multi-node group is scaled by spec.replicas only"
)
COMPUTE_DOMAIN_CREATE_OR_NAME = (
    "multiNode.computeDomain takes either create: true (a ComputeDomain named after the "
    "NIMService) or the name of an existing ComputeDomain, not both and not neither"
)
MULTI_NODE_GPU_MISMATCH = (
    "with spec.multiNode, each pod has multiNode.parallelism.tensor GPUs: leave gpu.count and "
    "resources nvidia.com/gpu unset, or set them to the same number"
)
# Ray's default head (GCS) port: NVIDIA's multiNode.ray.rayPort default, and nim-serve's.
DEFAULT_RAY_PORT = 6379
MULTI_NODE_MPI_OR_RAY = (
    "multiNode.mpi and multiNode.ray are mutually exclusive: a group starts either over MPI or "
    "as a Ray cluster; set one of them"
)
MULTI_NODE_RAY_PORT_TAKEN = (
    "multiNode.ray.rayPort is a port the leader's server already uses (expose.service port, "
    "grpcPort or metricsPort): the Ray head and the server cannot listen on the same port"
)
# NVIDIA's earlier multiNode shape: size (pods per group) and gpusPerPod (GPUs of each pod).
MULTI_NODE_SIZE_CONFLICT = (
    "multiNode.size (NVIDIA's earlier name for parallelism.pipeline, the pods of each group) and "
    "multiNode.parallelism.pipeline differ: set one of them, or both to the same number"
)
MULTI_NODE_GPUS_PER_POD_CONFLICT = (
    "multiNode.gpusPerPod (NVIDIA's earlier name for parallelism.tensor, the GPUs of each pod) "
    "and multiNode.parallelism.tensor differ: set one of them, or both to the same number"
)
# spec.type: NVIDIA's early NIMService said which kind of NIM it runs. nim-serve serves LLMs only.
NIM_TYPE_REFUSED = (
    "type embedding and reranking are not supported: this operator's server image (nim-serve) "
    "serves LLMs (chat and text completions), not /v1/embeddings or /v1/ranking; "
    "use type llm or leave it unset"
)
KSERVE_REFUSED = (
    "inferencePlatform kserve is not supported by this operator; use standalone "
    "(the server runs as a Deployment, not a KServe InferenceService)"
)
# NVIDIA's older spellings (models_nvidia_shapes) next to the current ones.
OPENAI_PORT_CONFLICT = (
    "expose.service.openaiPort (NVIDIA's earlier name for the API port) and expose.service.port "
    "differ: set one of them, or both to the same number"
)
NIM_CACHE_CONFLICT = (
    "spec.nimCache (NVIDIA's earlier place for it) and spec.storage.nimCache differ: set one of "
    "them, or both the same"
)
ROUTER_CONFLICT = (
    "spec.router (NVIDIA's earlier place for it) and spec.expose.router are the same setting: "
    "set only one of them"
)
ROUTER_INGRESS_CONFLICT = (
    "expose.ingress and spec.router.ingress both make the Ingress of this NIMService: set only "
    "one (both are NVIDIA's older forms of expose.router.ingress)"
)
STORAGE_PVC_SIZE_REQUIRED = (
    "storage.pvc.size is required when storage.pvc.create is true and no storage.nimCache is named"
)
STORAGE_PVC_UNUSABLE = (
    "storage.pvc needs either name (an existing claim) or create: true, unless storage.nimCache "
    "names a NIMCache or storage.emptyDir or storage.hostPath is set (NVIDIA's controller then "
    "uses those)"
)
DEFAULT_API_PORT = 8000
# Repository prefix of NVIDIA's NIM images.
NVIDIA_NIM_REGISTRY = "nvcr.io/nim/"
# model.name prefixes that say the model does not come from NGC: a Hugging Face repository
# (NIM's hf:// form) or a path inside the container (absolute, or NIM's file:// form).
NON_NGC_MODEL_PREFIXES = ("hf://", "file://", "/")
# The server's bearer key (nim_server's NIM_API_KEY), and the Secret key it is read from by default.
API_KEY_ENV = "NIM_API_KEY"

# The CRD's pattern only constrains the string form; a negative integer is refused here.
Quantity = Annotated[int, Field(ge=0)] | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)]
Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN)]
IntOrString = int | str
StringMap = dict[str, str]


class _Model(BaseModel):
    """Base: camelCase on the wire, unknown fields rejected (like the structural CRD)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    def to_k8s(self) -> dict[str, Any]:
        """The object as Kubernetes JSON: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --- image, credentials, environment ------------------------------------------------------------


class ImageSpec(_Model):
    repository: Annotated[str, Field(min_length=1)]
    tag: Annotated[str, Field(min_length=1)]
    pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    pull_secrets: list[str] | None = None

    @field_validator("pull_secrets")
    @classmethod
    def _pull_secrets_once(cls, names: list[str] | None) -> list[str] | None:
        # The pod's imagePullSecrets is a list keyed by name: a duplicate fails the apply.
        if names and len(set(names)) != len(names):
            raise ValueError("must not name a Secret twice")
        return names

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"

    def is_nvidia_nim(self) -> bool:
        """An NVIDIA NIM image (nvcr.io/nim/...): it names its own served model and uses NGC."""
        return self.repository.startswith(NVIDIA_NIM_REGISTRY)


class SecretKeySelector(_Model):
    name: str
    key: str
    optional: bool | None = None


class ConfigMapKeySelector(_Model):
    name: str
    key: str
    optional: bool | None = None


class ObjectFieldSelector(_Model):
    field_path: str
    api_version: str | None = None


class ResourceFieldSelector(_Model):
    resource: str
    container_name: str | None = None
    divisor: Quantity | None = None


class FileKeySelector(_Model):
    """corev1.FileKeySelector (Kubernetes 1.34, EnvFiles): a key of an env file in a volume."""

    volume_name: str
    path: str
    key: str
    optional: bool | None = None


class EnvVarSource(_Model):
    secret_key_ref: SecretKeySelector | None = None
    config_map_key_ref: ConfigMapKeySelector | None = None
    field_ref: ObjectFieldSelector | None = None
    resource_field_ref: ResourceFieldSelector | None = None
    file_key_ref: FileKeySelector | None = None


class EnvVar(_Model):
    name: Annotated[str, Field(min_length=1, max_length=256, pattern=ENV_NAME_PATTERN)]
    value: str | None = None
    value_from: EnvVarSource | None = None

    @model_validator(mode="after")
    def _secrets_only_by_reference(self) -> EnvVar:
        if self.name in SECRET_ENV_NAMES and self.value is not None:
            raise ValueError(
                "NGC_API_KEY, HF_TOKEN and NIM_API_KEY must come from a Secret "
                "(valueFrom.secretKeyRef), never a literal value"
            )
        return self


class APIKeySecret(_Model):
    """Where the server's API key lives: a key of a Secret in the NIMService's namespace."""

    name: Annotated[str, Field(min_length=1)]
    key: Annotated[str, Field(min_length=1)] = API_KEY_ENV


class ProxySpec(_Model):
    """NVIDIA's spec.proxy: the server's outbound proxy and the CA bundle that trusts it."""

    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: str | None = None
    # A ConfigMap whose `ca-bundle.crt` key is the whole CA bundle (mounted read-only).
    cert_config_map: str | None = None


# A container name: a DNS-1123 label.
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# The server container's name in the pod; extra containers may not take it.
SERVER_CONTAINER_NAME = "nim"


class ExtraContainer(_Model):
    """An init or sidecar container, in NVIDIA's NIMContainerSpec shape."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)]
    image: ImageSpec
    command: list[str] | None = None
    args: list[str] | None = None
    env: Annotated[list[EnvVar], Field(max_length=256)] | None = None
    working_dir: str | None = None


ExtraContainers = Annotated[list[ExtraContainer], Field(max_length=16)]


class ModelSpec(_Model):
    name: str | None = None
    served_name: str | None = None
    max_model_len: Annotated[int, Field(ge=1)] | None = None


class GPUSpec(_Model):
    count: Annotated[int, Field(ge=0, le=64)]


# --- dynamic resource allocation (NVIDIA's draResources) -----------------------------------------

# The CRD caps only the lists whose items carry CEL rules (a real API server refuses a CRD whose
# estimated rule cost, times the most items of every list above the rule, passes its budget):
# 32, the requests resource.k8s.io/v1 allows in one claim. What NVIDIA's CRD accepts and no
# Kubernetes object can hold (a request name that is not a DNS label, a count of 0, more than 32
# selectors) is refused here instead: the NIMService is Failed (InvalidSpec) and says why.
MAX_DRA_RESOURCES = 32
MAX_DEVICE_REQUESTS = 32
DRA_POD_CLAIM_PREFIX = "dra-"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SEMVER_PATTERN = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)
# Kubernetes allows 32 selectors per device request; the driver's own selector is one of them.
MAX_DEVICE_SELECTORS = 31
NVIDIA_GPU_DEVICE_CLASS = "gpu.nvidia.com"
DRA_SOURCE_REFUSED = (
    "draResources[] needs exactly one of resourceClaimName, resourceClaimTemplateName, "
    "claimCreationSpec"
)
DRA_CLAIMS_UNDECLARED = (
    "resources.claims names the pod claims of draResources: dra-0 for the first entry, dra-1 "
    "for the second, and so on; a name without its draResources entry is not declared"
)
SelectorOp = Literal[
    "Equal", "NotEqual", "GreaterThan", "GreaterThanOrEqual", "LessThan", "LessThanOrEqual"
]
# Any text (NVIDIA's CRD has no pattern): the renderer quotes it into the CEL selector.
DRAKey = Annotated[str, Field(max_length=64)]
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)]


def _dns_label(value: str, where: str) -> str:
    if len(value) > 63 or not re.fullmatch(DNS1123_LABEL, value):
        raise ValueError(f"{where} must be a DNS label (Kubernetes names it so): {value!r}")
    return value


class ContainerClaim(_Model):
    """corev1.ResourceClaim: the server container uses a pod claim (`dra-<i>`), or one request."""

    name: str
    request: str | None = None

    @field_validator("request")
    @classmethod
    def _request_name(cls, request: str | None) -> str | None:
        return None if request is None else _dns_label(request, "resources.claims[].request")


class ComputeResources(_Model):
    """Limits and requests: a container's resources where no DRA claim can reach it (the
    NIMCache's download)."""

    limits: dict[str, Quantity] | None = None
    requests: dict[str, Quantity] | None = None


class ResourceRequirements(ComputeResources):
    """The server container's resources: with the pod's DRA claims it uses (spec.draResources)."""

    claims: list[ContainerClaim] | None = None

    @field_validator("claims")
    @classmethod
    def _claims_once(cls, claims: list[ContainerClaim] | None) -> list[ContainerClaim] | None:
        # The container's claims are a list keyed by name (server-side apply keeps one per name).
        names = [claim.name for claim in claims or []]
        if len(set(names)) != len(names):
            raise ValueError("resources.claims must not name a claim twice")
        return claims


class DRAAttributeValue(_Model):
    """The value an attribute is compared with: one of the four, or none (the attribute exists)."""

    bool_value: bool | None = None
    int_value: int | None = None
    string_value: Annotated[str, Field(max_length=64)] | None = None
    version_value: Annotated[str, Field(max_length=64)] | None = None

    @model_validator(mode="after")
    def _at_most_one(self) -> DRAAttributeValue:
        given = (self.bool_value, self.int_value, self.string_value, self.version_value)
        if sum(value is not None for value in given) > 1:
            raise ValueError(
                "an attribute selector value takes one of boolValue, intValue, stringValue, "
                "versionValue"
            )
        if self.version_value is not None and not re.fullmatch(SEMVER_PATTERN, self.version_value):
            raise ValueError(
                f"versionValue must be a semantic version (semver.org): {self.version_value!r}"
            )
        return self

    def given(self) -> bool | int | str | None:
        """The value set, or None when none is."""
        for value in (self.bool_value, self.int_value, self.string_value, self.version_value):
            if value is not None:
                return value
        return None


class DRAAttributeSelector(_Model):
    key: DRAKey
    op: SelectorOp = "Equal"
    value: DRAAttributeValue | None = None


class DRACapacitySelector(_Model):
    key: DRAKey
    op: SelectorOp = "Equal"
    value: Quantity


class DRADevice(_Model):
    """One device request of a generated ResourceClaimTemplate."""

    name: Annotated[str, Field(min_length=1, max_length=253)]
    count: int = 1
    device_class_name: ObjectName = NVIDIA_GPU_DEVICE_CLASS
    driver_name: ObjectName = NVIDIA_GPU_DEVICE_CLASS
    attribute_selectors: list[DRAAttributeSelector] | None = None
    capacity_selectors: list[DRACapacitySelector] | None = None
    cel_expressions: list[str] | None = None

    @model_validator(mode="after")
    def _selectors(self) -> DRADevice:
        _dns_label(self.name, "claimCreationSpec.devices[].name")
        if self.count < 1:
            raise ValueError("claimCreationSpec.devices[].count must be at least 1")
        attributes = len(self.attribute_selectors or [])
        capacities = len(self.capacity_selectors or [])
        if self.cel_expressions and (attributes or capacities):
            raise ValueError(
                "celExpressions must not be set if attributeSelectors or capacitySelectors are set"
            )
        if max(attributes + capacities, len(self.cel_expressions or [])) > MAX_DEVICE_SELECTORS:
            raise ValueError(
                "a device takes at most 31 selectors (attributeSelectors and capacitySelectors "
                "together, or celExpressions): Kubernetes allows 32 per device request, one "
                "selects the driver"
            )
        if any(not expression for expression in self.cel_expressions or []):
            raise ValueError("celExpressions[] must not be empty")
        return self


class DRAClaimCreationSpec(_Model):
    """A ResourceClaimTemplate the operator creates, owned by the NIMService."""

    generate_name: Annotated[str, Field(min_length=1, max_length=16)] | None = None
    devices: Annotated[list[DRADevice], Field(min_length=1, max_length=MAX_DEVICE_REQUESTS)]

    @field_validator("generate_name")
    @classmethod
    def _name_part(cls, generate_name: str | None) -> str | None:
        # It becomes part of the template's (object) name.
        if generate_name is not None:
            _dns_label(generate_name, "claimCreationSpec.generateName")
        return generate_name

    @field_validator("devices")
    @classmethod
    def _device_names_once(cls, devices: list[DRADevice]) -> list[DRADevice]:
        names = [device.name for device in devices]
        if len(set(names)) != len(names):
            raise ValueError("claimCreationSpec.devices need distinct names (request names)")
        return devices


class DRAResource(_Model):
    """NVIDIA's DRAResource: one pod claim from a ResourceClaim, a template, or a generated one."""

    resource_claim_name: ObjectName | None = None
    resource_claim_template_name: ObjectName | None = None
    claim_creation_spec: DRAClaimCreationSpec | None = None
    requests: list[Annotated[str, Field(min_length=1)]] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DRAResource:
        sources = (
            self.resource_claim_name,
            self.resource_claim_template_name,
            self.claim_creation_spec,
        )
        if sum(source is not None for source in sources) != 1:
            raise ValueError(DRA_SOURCE_REFUSED)
        for request in self.requests or []:
            _dns_label(request, "draResources[].requests[]")
        return self


def dra_pod_claim_name(index: int) -> str:
    """The pod's name for draResources[index], which resources.claims refers to."""
    return f"{DRA_POD_CLAIM_PREFIX}{index}"


# --- storage ------------------------------------------------------------------------------------


class NIMCacheRef(_Model):
    """A NIMCache in the NIMService's namespace whose claim holds the model (read-only)."""

    # Unset or empty: no NIMCache (NVIDIA's controller skips it too; the profile is then unused).
    name: str | None = None
    # NVIDIA's NIM model profile to serve: NIM_MODEL_PROFILE on the server (see nimcache_mount).
    profile: str | None = None


class ClaimSpec(_Model):
    """storage.pvc as a NIMCache has it: an existing claim, or one to create."""

    create: bool = False
    name: str | None = None
    storage_class: str | None = None
    size: Quantity | None = None
    volume_access_mode: Literal[
        "ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"
    ] = "ReadWriteOnce"
    sub_path: str | None = None

    @model_validator(mode="after")
    def _name_or_create(self) -> ClaimSpec:
        if self.create and self.size is None:
            raise ValueError("storage.pvc.size is required when storage.pvc.create is true")
        if not self.create and not self.name:
            raise ValueError("storage.pvc needs either name (an existing claim) or create: true")
        return self


class PVCStorage(ClaimSpec):
    """A NIMService's storage.pvc: a NIMCache's, plus the claim's annotations and fate."""

    annotations: StringMap | None = None
    # Delete, as NVIDIA's operator does (the created claim is owned by the NIMService).
    retain_policy: Literal["Retain", "Delete"] = "Delete"

    @model_validator(mode="after")
    def _name_or_create(self) -> PVCStorage:
        # Replaces the NIMCache's rule: a NIMService's pvc is one source among several, so
        # whether it can be used is decided with the others (StorageSpec).
        return self

    def is_source(self) -> bool:
        """A claim to create or an existing one; otherwise NVIDIA's controller skips it."""
        return self.create or bool(self.name)


class AdapterVolume(_Model):
    name: Annotated[str, Field(min_length=1)]  # an existing claim: adapters are published to it
    sub_path: str | None = None


class AdaptersSpec(_Model):
    """LoRA adapters (NIM's PEFT source) read from a claim, mounted read-only."""

    pvc: AdapterVolume
    refresh_interval_seconds: Annotated[int, Field(ge=1)] | None = None
    max_rank: Annotated[int, Field(ge=1, le=512)] | None = None


class EmptyDirStorage(_Model):
    size_limit: Quantity | None = None


class StorageSpec(_Model):
    nim_cache: NIMCacheRef | None = None
    pvc: PVCStorage | None = None
    empty_dir: EmptyDirStorage | None = None
    # Empty is no path (NVIDIA's controller skips it).
    host_path: Annotated[str, Field(pattern=r"^(/.*)?$")] | None = None
    read_only: bool = False
    shared_memory_size_limit: Quantity | None = None

    @model_validator(mode="after")
    def _usable_source(self) -> StorageSpec:
        # Any combination is NVIDIA's; the one used follows its precedence (models_nvidia_shapes).
        # Refused only what no source can run: a claim that is neither named nor created with
        # nothing else to fall back on, and a claim to create without a size (the API server
        # rejects a PVC that requests no storage).
        cache = self.nim_cache is not None and bool(self.nim_cache.name)
        if self.pvc is None or cache:
            return self
        if self.pvc.create and self.pvc.size is None:
            raise ValueError(STORAGE_PVC_SIZE_REQUIRED)
        if not self.pvc.is_source() and self.empty_dir is None and not self.host_path:
            raise ValueError(STORAGE_PVC_UNUSABLE)
        return self


# --- exposure, probes ---------------------------------------------------------------------------


Port = Annotated[int, Field(ge=1, le=65535)]
# Gateway API / Ingress host names: lower-case DNS names (NVIDIA's hostDomainName pattern).
HOST_DOMAIN_PATTERN = r"^(([a-z0-9][a-z0-9\-]*[a-z0-9])|[a-z0-9]+\.)*([a-z]+|xn\-\-[a-z0-9]+)\.?$"
# gateway-api's patterns for a BackendRef's group ("" is core) and kind.
GATEWAY_GROUP_PATTERN = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
GATEWAY_KIND_PATTERN = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"


class ServiceSpec(_Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    name: Annotated[str, Field(max_length=63, pattern=DNS1035_LABEL)] | None = None
    # Unset: openaiPort (NVIDIA's earlier name for it), else 8000.
    port: Port | None = None
    openai_port: Port | None = None
    grpc_port: Port | None = None
    metrics_port: Port | None = None
    annotations: StringMap | None = None
    labels: StringMap | None = None

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServiceSpec:
        if self.port is not None and self.openai_port is not None and self.port != self.openai_port:
            raise ValueError(OPENAI_PORT_CONFLICT)
        # Kept although NVIDIA's CRD accepts it: the Service would repeat a port, which the API
        # server rejects.
        ports = [p for p in (self.api_port(), self.grpc_port, self.metrics_port) if p is not None]
        if len(set(ports)) != len(ports):
            raise ValueError("expose.service port, grpcPort and metricsPort must all differ")
        return self

    def api_port(self) -> int:
        if self.port is not None:
            return self.port
        return self.openai_port if self.openai_port is not None else DEFAULT_API_PORT


class ServiceBackendPort(_Model):
    name: str | None = None
    number: Port | None = None

    @model_validator(mode="after")
    def _name_or_number(self) -> ServiceBackendPort:
        if (self.name is None) == (self.number is None):
            raise ValueError("an Ingress service port needs exactly one of name, number")
        return self


class IngressServiceBackend(_Model):
    name: Annotated[str, Field(min_length=1)]
    port: ServiceBackendPort


class TypedLocalObjectReference(_Model):
    kind: str
    name: str
    api_group: str | None = None


class IngressBackend(_Model):
    service: IngressServiceBackend | None = None
    resource: TypedLocalObjectReference | None = None

    @model_validator(mode="after")
    def _one_target(self) -> IngressBackend:
        if (self.service is None) == (self.resource is None):
            raise ValueError("an Ingress backend needs exactly one of service, resource")
        return self


class HTTPIngressPath(_Model):
    path_type: Literal["Exact", "Prefix", "ImplementationSpecific"]
    path: str | None = None
    # nimstack addition: unset means this NIMService's Service, port api.
    backend: IngressBackend | None = None


class HTTPIngressRuleValue(_Model):
    # Bounded as in the CRD: the API server prices the backend's CEL rules per path.
    paths: Annotated[list[HTTPIngressPath], Field(min_length=1, max_length=128)]


class IngressRule(_Model):
    host: str | None = None
    http: HTTPIngressRuleValue | None = None


class IngressTLS(_Model):
    hosts: list[str] | None = None
    secret_name: str | None = None


class IngressSpec(_Model):
    """networking.k8s.io/v1 IngressSpec, every field of it."""

    ingress_class_name: str | None = None
    default_backend: IngressBackend | None = None
    tls: list[IngressTLS] | None = None
    rules: Annotated[list[IngressRule], Field(max_length=128)] | None = None


class IngressExpose(_Model):
    """expose.ingress: NVIDIA's original (now deprecated) form, an IngressSpec passed through."""

    enabled: bool = False
    annotations: StringMap | None = None
    spec: IngressSpec | None = None

    @model_validator(mode="after")
    def _spec_when_enabled(self) -> IngressExpose:
        if self.enabled and (
            self.spec is None or not (self.spec.rules or self.spec.default_backend)
        ):
            raise ValueError(
                "expose.ingress.spec needs rules or a defaultBackend when expose.ingress.enabled"
            )
        return self


class RouterIngress(_Model):
    ingress_class: Annotated[str, Field(min_length=1)]
    tls_secret_name: str | None = None


class GatewayBackendRef(_Model):
    """gateway-api's BackendRef: where the HTTPRoute sends requests instead of our Service."""

    group: Annotated[str, Field(max_length=253, pattern=GATEWAY_GROUP_PATTERN)] = ""
    kind: Annotated[str, Field(min_length=1, max_length=63, pattern=GATEWAY_KIND_PATTERN)] = (
        "Service"
    )
    name: Annotated[str, Field(min_length=1, max_length=253)]
    namespace: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)] | None = (
        None
    )
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    weight: Annotated[int, Field(ge=0, le=1_000_000)] = 1

    @model_validator(mode="after")
    def _service_port(self) -> GatewayBackendRef:
        # gateway-api's own rule: a Service has no single port to default to.
        if self.group == "" and self.kind == "Service" and self.port is None:
            raise ValueError("Must have port for Service reference")
        return self


class RouterGateway(_Model):
    namespace: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    http_routes_enabled: bool = True
    grpc_routes_enabled: bool = False
    backend_ref: GatewayBackendRef | None = None


class RouterSpec(_Model):
    """expose.router: an Ingress or Gateway API routes for `<name>.<namespace>.<hostDomainName>`."""

    host_domain_name: (
        Annotated[str, Field(min_length=1, max_length=63, pattern=HOST_DOMAIN_PATTERN)] | None
    ) = None
    annotations: StringMap | None = None
    ingress: RouterIngress | None = None
    gateway: RouterGateway | None = None
    # Defined below, after Probe (the EPP's probes are corev1.Probes).
    epp_config: EPPConfig | None = None

    @model_validator(mode="after")
    def _ingress_or_gateway(self) -> RouterSpec:
        if self.ingress is not None and self.gateway is not None:
            raise ValueError("expose.router: ingress and gateway cannot be specified together")
        return self

    def host(self, name: str, namespace: str) -> str | None:
        """The host routed to the service, as NVIDIA builds it; None without hostDomainName."""
        if not self.host_domain_name:
            return None
        return f"{name}.{namespace}.{self.host_domain_name.rstrip('.')}"


class LegacyRouterGateway(_Model):
    """spec.router.gateway as NVIDIA had it at the top level (no GRPCRoutes yet)."""

    namespace: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    http_routes_enabled: bool = True


class LegacyRouterSpec(_Model):
    """NVIDIA's top-level spec.router, the transitional place of expose.router."""

    host_domain_name: (
        Annotated[str, Field(min_length=1, max_length=63, pattern=HOST_DOMAIN_PATTERN)] | None
    ) = None
    annotations: StringMap | None = None
    ingress: RouterIngress | None = None
    gateway: LegacyRouterGateway | None = None

    @model_validator(mode="after")
    def _ingress_or_gateway(self) -> LegacyRouterSpec:
        if self.ingress is not None and self.gateway is not None:
            raise ValueError("spec.router: ingress and gateway cannot be specified together")
        return self


class ExposeSpec(_Model):
    service: ServiceSpec = ServiceSpec()
    ingress: IngressExpose | None = None
    router: RouterSpec | None = None

    @model_validator(mode="after")
    def _one_ingress(self) -> ExposeSpec:
        if self.ingress_enabled() and self.router is not None and self.router.ingress is not None:
            raise ValueError(
                "expose.ingress and expose.router.ingress both make the Ingress of this "
                "NIMService: set only one (expose.ingress is NVIDIA's deprecated form)"
            )
        return self

    def grpc_route_without_port(self) -> bool:
        """grpcRoutesEnabled with no grpcPort: as at NVIDIA it is accepted, but no GRPCRoute
        can be made (nothing to send to); the Exposed condition says so."""
        gateway = self.gateway()
        return (
            gateway is not None and gateway.grpc_routes_enabled and self.service.grpc_port is None
        )

    def ingress_enabled(self) -> bool:
        return self.ingress is not None and self.ingress.enabled

    def gateway(self) -> RouterGateway | None:
        return self.router.gateway if self.router is not None else None


class ExecAction(_Model):
    command: list[str] | None = None


class HTTPHeader(_Model):
    name: str
    value: str


class HTTPGetAction(_Model):
    port: IntOrString
    path: str | None = None
    host: str | None = None
    scheme: Literal["HTTP", "HTTPS"] | None = None
    http_headers: list[HTTPHeader] | None = None


class TCPSocketAction(_Model):
    port: IntOrString
    host: str | None = None


class GRPCAction(_Model):
    port: Annotated[int, Field(ge=1, le=65535)]
    service: str | None = None


class Probe(_Model):
    """corev1.Probe, every field of it."""

    exec: ExecAction | None = None
    http_get: HTTPGetAction | None = None
    tcp_socket: TCPSocketAction | None = None
    grpc: GRPCAction | None = None
    # 0 is Kubernetes' "unset" for the four below: the API server defaults it (timeout 1 s,
    # period 10 s, thresholds 1 and 3). NVIDIA's CRD passes it on.
    initial_delay_seconds: Annotated[int, Field(ge=0)] | None = None
    timeout_seconds: Annotated[int, Field(ge=0)] | None = None
    period_seconds: Annotated[int, Field(ge=0)] | None = None
    success_threshold: Annotated[int, Field(ge=0)] | None = None
    failure_threshold: Annotated[int, Field(ge=0)] | None = None
    termination_grace_period_seconds: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _one_handler(self) -> Probe:
        handlers = [self.exec, self.http_get, self.tcp_socket, self.grpc]
        if sum(h is not None for h in handlers) != 1:
            raise ValueError("a probe needs exactly one of exec, httpGet, tcpSocket, grpc")
        return self


class ProbeSpec(_Model):
    enabled: bool = True
    probe: Probe | None = None


# --- expose.router.eppConfig: the Gateway API Inference Extension's endpoint picker ------------

# An IANA service name, which is what a container port's name must be.
PORT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
EPP_CONFIG_SOURCE_REFUSED = (
    "expose.router.eppConfig needs exactly one of configMapRef and config: the endpoint picker "
    "has no configuration of its own"
)
EPP_HOST_PORT_REFUSED = (
    "expose.router.eppConfig.ports[].hostPort is not allowed: the endpoint picker runs under "
    "the restricted Pod Security Standard"
)


class ContainerPort(_Model):
    """corev1.ContainerPort of the endpoint picker's container."""

    name: Annotated[str, Field(min_length=1, max_length=15, pattern=PORT_NAME_PATTERN)] | None = (
        None
    )
    container_port: Annotated[int, Field(ge=1, le=65535)]
    protocol: Literal["TCP", "UDP", "SCTP"] | None = None
    host_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    host_ip: Annotated[str | None, Field(alias="hostIP")] = None

    @model_validator(mode="after")
    def _no_host_port(self) -> ContainerPort:
        if self.host_port is not None:
            raise ValueError(EPP_HOST_PORT_REFUSED)
        return self


class EPPConfig(_Model):
    """expose.router.eppConfig (NVIDIA's EPPConfig): run an endpoint picker for an InferencePool
    of this NIMService's pods (nim_operator.render.endpoint_picker)."""

    container_spec: ExtraContainer
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    startup_probe: Probe | None = None
    ports: Annotated[list[ContainerPort], Field(max_length=16)] | None = None
    config_map_ref: ConfigMapKeySelector | None = None
    # The upstream EndpointPickerConfig, passed through as the user wrote it.
    config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_config_source(self) -> EPPConfig:
        if (self.config_map_ref is None) == (self.config is None):
            raise ValueError(EPP_CONFIG_SOURCE_REFUSED)
        names = [port.name for port in self.ports or [] if port.name]
        if len(set(names)) != len(names):
            raise ValueError("expose.router.eppConfig.ports: a port name is used twice")
        return self


# RouterSpec names EPPConfig before it exists (the EPP's probes are Probes, defined above).
RouterSpec.model_rebuild()
ExposeSpec.model_rebuild()


# --- autoscaling --------------------------------------------------------------------------------


class LabelSelectorRequirement(_Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class LabelSelector(_Model):
    match_labels: StringMap | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None


class MetricTarget(_Model):
    type: Literal["Utilization", "Value", "AverageValue"]
    value: Quantity | None = None
    average_value: Quantity | None = None
    average_utilization: Annotated[int, Field(ge=1)] | None = None


class MetricIdentifier(_Model):
    name: str
    selector: LabelSelector | None = None


class CrossVersionObjectReference(_Model):
    kind: str
    name: str
    api_version: str | None = None


class ResourceMetricSource(_Model):
    name: str
    target: MetricTarget


class ContainerResourceMetricSource(_Model):
    name: str
    container: str
    target: MetricTarget


class PodsMetricSource(_Model):
    metric: MetricIdentifier
    target: MetricTarget


class ObjectMetricSource(_Model):
    described_object: CrossVersionObjectReference
    metric: MetricIdentifier
    target: MetricTarget


class ExternalMetricSource(_Model):
    metric: MetricIdentifier
    target: MetricTarget


class MetricSpec(_Model):
    """autoscaling/v2 MetricSpec, every field of it."""

    type: Literal["Resource", "ContainerResource", "Pods", "Object", "External"]
    resource: ResourceMetricSource | None = None
    container_resource: ContainerResourceMetricSource | None = None
    pods: PodsMetricSource | None = None
    object: ObjectMetricSource | None = None
    external: ExternalMetricSource | None = None

    @model_validator(mode="after")
    def _source_matches_type(self) -> MetricSpec:
        field = {
            "Resource": "resource",
            "ContainerResource": "container_resource",
            "Pods": "pods",
            "Object": "object",
            "External": "external",
        }[self.type]
        if getattr(self, field) is None:
            raise ValueError("a metric of a given type needs the source of that type set")
        return self


class HPAScalingPolicy(_Model):
    type: Literal["Pods", "Percent"]
    value: Annotated[int, Field(ge=1)]
    period_seconds: Annotated[int, Field(ge=1, le=1800)]


class HPAScalingRules(_Model):
    stabilization_window_seconds: Annotated[int, Field(ge=0, le=3600)] | None = None
    select_policy: Literal["Max", "Min", "Disabled"] | None = None
    policies: list[HPAScalingPolicy] | None = None
    # Kubernetes 1.33+ (HPAConfigurableTolerance): the fraction the metric may stray from the
    # target before scaling, e.g. "0.05"; passed through to the HPA.
    tolerance: Quantity | None = None


class HPABehavior(_Model):
    scale_up: HPAScalingRules | None = None
    scale_down: HPAScalingRules | None = None


class HPASpec(_Model):
    min_replicas: Annotated[int, Field(ge=1)] = 1
    max_replicas: Annotated[int, Field(ge=1)]
    metrics: Annotated[list[MetricSpec], Field(max_length=16)] | None = None
    behavior: HPABehavior | None = None

    @model_validator(mode="after")
    def _max_at_least_min(self) -> HPASpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError("scale.hpa.maxReplicas must be >= scale.hpa.minReplicas")
        return self


class ScaleSpec(_Model):
    enabled: bool = False
    hpa: HPASpec | None = None
    annotations: StringMap | None = None

    @model_validator(mode="after")
    def _hpa_when_enabled(self) -> ScaleSpec:
        if self.enabled and self.hpa is None:
            raise ValueError("scale.hpa (at least maxReplicas) is required when scale.enabled")
        return self


# The built-in autoscaler's metrics (nim_operator.autoscaling) and the target of each when unset:
# waiting requests per pod, requests in flight per pod, fraction of the KV cache in use.
AutoscalingMetric = Literal["queue", "running", "kvCache"]
DEFAULT_AUTOSCALING_TARGETS: dict[str, float] = {"queue": 4.0, "running": 16.0, "kvCache": 0.75}


class AutoscalingSpec(_Model):
    """The built-in autoscaler (a nimstack addition): scales on what the pods report."""

    # 0 allows scaling to zero once idle for `scale_to_zero_after` seconds (nim-gateway wakes it).
    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1)]
    metric: AutoscalingMetric = "running"
    target: Annotated[float, Field(gt=0)] | None = None
    tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.1
    scale_up_stabilization_seconds: Annotated[int, Field(ge=0, le=3600)] = 0
    scale_down_stabilization_seconds: Annotated[int, Field(ge=0, le=3600)] = 300
    interval: Annotated[int, Field(ge=1, le=3600)] = 15
    scale_to_zero_after: Annotated[int, Field(ge=1, le=86400)] = 300

    @model_validator(mode="after")
    def _consistent(self) -> AutoscalingSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError("autoscaling.maxReplicas must be >= autoscaling.minReplicas")
        if self.metric == "kvCache" and self.target is not None and self.target > 1:
            raise ValueError(
                "autoscaling.target for kvCache is the fraction of the KV cache in use, "
                "at most 1 (e.g. 0.75)"
            )
        return self

    def effective_target(self) -> float:
        if self.target is not None:
            return self.target
        return DEFAULT_AUTOSCALING_TARGETS[self.metric]


# --- metrics, scheduling ------------------------------------------------------------------------


class ServiceMonitorSpec(_Model):
    additional_labels: StringMap | None = None
    annotations: StringMap | None = None
    interval: Duration | None = None
    scrape_timeout: Duration | None = None


class MetricsSpec(_Model):
    enabled: bool = False
    service_monitor: ServiceMonitorSpec | None = None


class Toleration(_Model):
    """corev1.Toleration, every field of it (tolerationSeconds included)."""

    key: Annotated[str, Field(max_length=316)] | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: Annotated[str, Field(max_length=256)] | None = None
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists must not have a value")
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without a key needs operator Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds is only allowed with effect NoExecute")
        return self


# --- multi-node (NVIDIA's multiNode: one server spread over a LeaderWorkerSet group) -------------


class MultiNodeParallelism(_Model):
    """How the model is split: `tensor` GPUs in each pod, `pipeline` pods in each group."""

    # No upper bound, as NVIDIA's: a size no node or group can hold stays Pending, which the
    # Ready condition reports.
    tensor: Annotated[int, Field(ge=1)] | None = None
    pipeline: Annotated[int, Field(ge=1)] | None = None


class MultiNodeMPI(_Model):
    # 0 means NVIDIA's default (300 s), as its controller reads it.
    mpi_start_timeout: Annotated[int, Field(ge=0)] = DEFAULT_MPI_START_TIMEOUT

    def seconds(self) -> int:
        return self.mpi_start_timeout or DEFAULT_MPI_START_TIMEOUT


class MultiNodeComputeDomain(_Model):
    """NVIDIA's multiNode.computeDomain: the groups' pods share a ComputeDomain of NVIDIA's DRA
    driver (resource.nvidia.com/v1beta1), a Multi-Node NVLink (IMEX) domain. `create` has the
    operator create one named after the NIMService; otherwise `name` is an existing one."""

    create: bool | None = None
    name: ObjectName | None = None

    @model_validator(mode="after")
    def _create_or_name(self) -> MultiNodeComputeDomain:
        if self.create and self.name is not None:
            raise ValueError(COMPUTE_DOMAIN_CREATE_OR_NAME)
        if not self.create and not self.name:
            raise ValueError(COMPUTE_DOMAIN_CREATE_OR_NAME)
        return self


class MultiNodeRay(_Model):
    """NVIDIA's multiNode.ray: the group runs as a Ray cluster whose head listens on rayPort."""

    ray_port: Annotated[int, Field(ge=1, le=65535)] = DEFAULT_RAY_PORT


class MultiNodeSpec(_Model):
    # lws is the only backend, at NVIDIA too (ray is a start-up, beside mpi, not a backend).
    backend_type: Literal["lws"] = "lws"
    # Required at NVIDIA since it replaced size/gpusPerPod; optional here so that the earlier
    # shape still parses. Unset sizes are 1, as NVIDIA's earlier defaults were.
    parallelism: MultiNodeParallelism | None = None
    size: Annotated[int, Field(ge=1)] | None = None
    gpus_per_pod: Annotated[int, Field(ge=1)] | None = None
    mpi: MultiNodeMPI | None = None
    ray: MultiNodeRay | None = None
    compute_domain: MultiNodeComputeDomain | None = None

    @model_validator(mode="after")
    def _one_start_up_and_one_size_each(self) -> MultiNodeSpec:
        if self.mpi is not None and self.ray is not None:
            raise ValueError(MULTI_NODE_MPI_OR_RAY)
        pipeline, tensor = self._split().pipeline, self._split().tensor
        if self.size is not None and pipeline is not None and self.size != pipeline:
            raise ValueError(MULTI_NODE_SIZE_CONFLICT)
        if self.gpus_per_pod is not None and tensor is not None and self.gpus_per_pod != tensor:
            raise ValueError(MULTI_NODE_GPUS_PER_POD_CONFLICT)
        return self

    def _split(self) -> MultiNodeParallelism:
        return self.parallelism or MultiNodeParallelism()

    def tensor_size(self) -> int:
        return self._split().tensor or self.gpus_per_pod or 1

    def pipeline_size(self) -> int:
        return self._split().pipeline or self.size or 1

    def start_timeout(self) -> int:
        return (self.mpi or MultiNodeMPI()).seconds()

    def ray_port(self) -> int:
        """Where the group's Ray head listens: multiNode.ray.rayPort, else Ray's default."""
        return self.ray.ray_port if self.ray is not None else DEFAULT_RAY_PORT


# --- the spec -----------------------------------------------------------------------------------


class NIMServiceSpec(_Model):
    """Desired state of a NIMService."""

    image: ImageSpec
    # NVIDIA's `type`; only llm is served, embedding and reranking are refused loudly.
    nim_type: Annotated[Literal["llm", "embedding", "reranking"], Field(alias="type")] = "llm"
    # NVIDIA's field; only standalone (a Deployment) exists here, kserve is refused loudly.
    inference_platform: Literal["standalone", "kserve"] = "standalone"
    auth_secret: str | None = None
    api_key_secret: APIKeySecret | None = None
    proxy: ProxySpec | None = None
    init_containers: ExtraContainers | None = None
    sidecar_containers: ExtraContainers | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: Annotated[list[EnvVar], Field(max_length=256)] | None = None
    model: ModelSpec | None = None
    gpu: GPUSpec | None = None
    resources: ResourceRequirements | None = None
    dra_resources: Annotated[list[DRAResource], Field(max_length=MAX_DRA_RESOURCES)] | None = None
    replicas: Annotated[int, Field(ge=0)] | None = None
    # Idle seconds after which a fixed count goes to 0 (nim-gateway sets it back to 1).
    scale_to_zero_after: Annotated[int, Field(ge=1, le=86400)] | None = None
    storage: StorageSpec = StorageSpec()
    adapters: AdaptersSpec | None = None
    expose: ExposeSpec = ExposeSpec()
    liveness_probe: ProbeSpec = ProbeSpec()
    readiness_probe: ProbeSpec = ProbeSpec()
    startup_probe: ProbeSpec = ProbeSpec()
    scale: ScaleSpec = ScaleSpec()
    autoscaling: AutoscalingSpec | None = None
    metrics: MetricsSpec = MetricsSpec()
    labels: StringMap | None = None
    annotations: StringMap | None = None
    node_selector: StringMap | None = None
    tolerations: Annotated[list[Toleration], Field(max_length=64)] | None = None
    affinity: dict[str, Any] | None = None
    # NVIDIA's deprecated spelling of affinity.podAffinity, used when affinity has none.
    pod_affinity: dict[str, Any] | None = None
    # NVIDIA's earlier places of storage.nimCache and expose.router (models_nvidia_shapes).
    nim_cache: NIMCacheRef | None = None
    router: LegacyRouterSpec | None = None
    user_id: Annotated[int, Field(ge=1, alias="userID")] = 1000
    group_id: Annotated[int, Field(ge=0, alias="groupID")] = 2000
    runtime_class_name: str | None = None
    priority_class_name: str | None = None
    scheduler_name: str | None = None
    shutdown_timeout_seconds: Annotated[int, Field(ge=0, le=3600)] = 30
    read_only_root_filesystem: bool = True
    multi_node: MultiNodeSpec | None = None

    @model_validator(mode="after")
    def _cross_field_rules(self) -> NIMServiceSpec:
        if self.nim_type != "llm":
            raise ValueError(NIM_TYPE_REFUSED)
        if self.inference_platform == "kserve":
            raise ValueError(KSERVE_REFUSED)
        if self.multi_node is not None:
            self._check_multi_node(self.multi_node)
        extra = [c.name for c in (self.init_containers or []) + (self.sidecar_containers or [])]
        if SERVER_CONTAINER_NAME in extra or len(set(extra)) != len(extra):
            raise ValueError(
                "initContainers and sidecarContainers need names unique across both lists and "
                "other than nim (the server container)"
            )
        self._check_old_spellings()
        if self._names_nim_cache() and self.model is not None and self.model.name:
            raise ValueError(
                "model.name and storage.nimCache are mutually exclusive: "
                "the model is the one the NIMCache holds"
            )
        if self.replicas is not None and self.scale.enabled:
            raise ValueError(
                "spec.replicas and spec.scale.enabled are mutually exclusive: "
                "the HPA owns the replica count while autoscaling is on"
            )
        if self.autoscaling is not None and self.replicas is not None:
            raise ValueError(
                "spec.replicas and spec.autoscaling are mutually exclusive: "
                "the built-in autoscaler owns the replica count"
            )
        if self.autoscaling is not None and self.scale.enabled:
            raise ValueError(
                "spec.autoscaling and spec.scale.enabled are mutually exclusive: "
                "use either the built-in autoscaler or an HPA"
            )
        if self.scale_to_zero_after is not None and (
            self.autoscaling is not None or self.scale.enabled
        ):
            raise ValueError(
                "spec.scaleToZeroAfter is for a fixed replica count; with spec.autoscaling use "
                "autoscaling.minReplicas 0 and autoscaling.scaleToZeroAfter, and an HPA cannot "
                "scale to zero"
            )
        if self.scale_to_zero_after is not None and self.multi_node is not None:
            raise ValueError(SCALE_TO_ZERO_MULTI_NODE_REFUSED)
        self._check_dra_claims()
        gpu_quantity = self._resource_gpu_quantity()
        if self.gpu is not None and gpu_quantity is not None:
            raise ValueError(
                "set the GPU count either in gpu.count or in resources "
                "(limits/requests nvidia.com/gpu), not both"
            )
        if gpu_quantity is not None and not str(gpu_quantity).isdigit():
            # Kubernetes would refuse the pod later; say so now, where the spec is.
            raise ValueError("resources nvidia.com/gpu must be a whole number of GPUs")
        return self

    def _names_nim_cache(self) -> bool:
        refs = (self.storage.nim_cache, self.nim_cache)
        return any(ref is not None and bool(ref.name) for ref in refs)

    def _check_old_spellings(self) -> None:
        if (
            self.nim_cache is not None
            and self.storage.nim_cache is not None
            and self.nim_cache != self.storage.nim_cache
        ):
            raise ValueError(NIM_CACHE_CONFLICT)
        if self.router is not None and self.expose.router is not None:
            raise ValueError(ROUTER_CONFLICT)
        if (
            self.router is not None
            and self.router.ingress is not None
            and self.expose.ingress_enabled()
        ):
            raise ValueError(ROUTER_INGRESS_CONFLICT)

    def _check_dra_claims(self) -> None:
        declared = {dra_pod_claim_name(i) for i in range(len(self.dra_resources or []))}
        claims = self.resources.claims if self.resources is not None else None
        if any(claim.name not in declared for claim in claims or []):
            raise ValueError(DRA_CLAIMS_UNDECLARED)

    def _check_multi_node(self, multi_node: MultiNodeSpec) -> None:
        if self.scale.enabled or self.autoscaling is not None:
            raise ValueError(MULTI_NODE_AUTOSCALING_REFUSED)
        # multiNode.parallelism.tensor is the pod's GPU count; a second, different one is a typo.
        gpus = self.gpu.count if self.gpu is not None else self._resource_gpu_quantity()
        if gpus is not None and str(gpus) != str(multi_node.tensor_size()):
            raise ValueError(MULTI_NODE_GPU_MISMATCH)
        # Refused although NVIDIA's CRD accepts it: the leader would never start its group.
        service = self.expose.service
        served = {service.api_port(), service.grpc_port, service.metrics_port}
        if multi_node.ray is not None and multi_node.ray.ray_port in served:
            raise ValueError(MULTI_NODE_RAY_PORT_TAKEN)

    @classmethod
    def from_body(cls, spec: dict[str, Any]) -> NIMServiceSpec:
        """Parse the `spec` of a NIMService object as the API server stores it, with NVIDIA's
        older spellings and unused storage sources folded away (models_nvidia_shapes).

        The stored spec is validated as written first, so a rule about the old spelling (and
        its message) applies before the fold makes it disappear.
        """
        cls.model_validate(spec)
        return cls.model_validate(current_spec(spec))

    # Helpers in the spirit of NVIDIA's API type, so renderers and reconcile agree on meaning.

    def hpa_enabled(self) -> bool:
        return self.scale.enabled

    def autoscaling_enabled(self) -> bool:
        """The built-in autoscaler (nim_operator.autoscaling) owns the replica count."""
        return self.autoscaling is not None

    def idle_timeout(self) -> int | None:
        """Seconds without requests after which this service scales to zero, or None if never."""
        if self.autoscaling is not None:
            if self.autoscaling.min_replicas > 0:
                return None
            return self.autoscaling.scale_to_zero_after
        return self.scale_to_zero_after

    def desired_replicas(self) -> int | None:
        """Replicas the Deployment should have, or None when an autoscaler decides."""
        if self.hpa_enabled() or self.autoscaling_enabled():
            return None
        return 1 if self.replicas is None else self.replicas

    def max_possible_replicas(self) -> int:
        """The most pods this service can run at once (for the disruption budget)."""
        if self.hpa_enabled() and self.scale.hpa is not None:
            return self.scale.hpa.max_replicas
        if self.autoscaling is not None:
            return self.autoscaling.max_replicas
        return 1 if self.replicas is None else self.replicas

    def gpu_count(self) -> int:
        """GPUs per pod: multiNode's tensor parallelism, gpu.count, else an explicit
        nvidia.com/gpu resource, else one."""
        if self.multi_node is not None:
            return self.multi_node.tensor_size()
        if self.gpu is not None:
            return self.gpu.count
        quantity = self._resource_gpu_quantity()
        if quantity is None:
            # With draResources the devices come from the claims: a device-plugin GPU on top
            # would be a second, unwanted one.
            return 0 if self.dra_resources else 1
        return int(str(quantity))

    def model_name(self) -> str | None:
        """The NIM_MODEL_NAME the server gets: the user's own env entry (which replaces the
        injected one, and is how NVIDIA's samples name an hf:// model), else model.name."""
        for entry in self.env or ():
            if entry.name == "NIM_MODEL_NAME" and entry.value_from is None:
                return entry.value
        return self.model.name if self.model is not None else None

    def ngc_key_required(self) -> bool:
        """Whether NGC_API_KEY must be in the authSecret: not for an hf:// or local model."""
        name = self.model_name()
        return not (name and name.startswith(NON_NGC_MODEL_PREFIXES))

    def sets_served_model_name(self) -> bool:
        """The operator sets NIM_SERVED_MODEL_NAME unless an NVIDIA NIM image names its own."""
        explicit = self.model is not None and bool(self.model.served_name)
        return explicit or not self.image.is_nvidia_nim()

    def served_model_name(self, owner_name: str) -> str:
        if self.model is not None and self.model.served_name:
            return self.model.served_name
        return owner_name

    def metrics_enabled(self) -> bool:
        return self.metrics.enabled

    def service_port(self) -> int:
        return self.expose.service.api_port()

    def service_name(self, owner_name: str) -> str:
        """The Service's name: expose.service.name, else the NIMService's."""
        return self.expose.service.name or owner_name

    def _resource_gpu_quantity(self) -> Quantity | None:
        if self.resources is None:
            return None
        for group in (self.resources.limits, self.resources.requests):
            if group and GPU_RESOURCE in group:
                return group[GPU_RESOURCE]
        return None


def service_name_problem(name: str) -> str | None:
    """Why `name` cannot name a NIMService (its Service needs a DNS-1035 label), or None."""
    if len(name) > 63 or not re.match(DNS1035_LABEL, name):
        return (
            "the NIMService name must be a DNS-1035 label (at most 63 characters: lower-case "
            "letters, digits and '-', starting with a letter) because it names the Service"
        )
    return None


# --- status -------------------------------------------------------------------------------------


class Condition(_Model):
    """metav1.Condition."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[
        str,
        Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
    ]
    message: Annotated[str, Field(max_length=32768)]
    last_transition_time: str
    observed_generation: Annotated[int, Field(ge=0)] | None = None


class ModelStatus(_Model):
    name: str | None = None
    cluster_endpoint: str | None = None
    external_endpoint: str | None = None


class ScaleRecord(_Model):
    """One decision of the built-in autoscaler that changed the replica count."""

    time: str
    from_replicas: Annotated[int, Field(ge=0, alias="from")]
    to: Annotated[int, Field(ge=0)]
    metric: AutoscalingMetric
    value: float | None = None
    reason: str


class AutoscalingStatus(_Model):
    """What the built-in autoscaler measured and decided (status.autoscaling)."""

    metric: AutoscalingMetric | None = None
    target: float | None = None
    current_metric: float | None = None
    current_replicas: Annotated[int, Field(ge=0)] | None = None
    desired_replicas: Annotated[int, Field(ge=0)] | None = None
    last_scale_time: str | None = None
    reason: str | None = None
    message: Annotated[str, Field(max_length=4096)] | None = None
    history: Annotated[list[ScaleRecord], Field(max_length=10)] | None = None


class DRAResourceClaimStatusInfo(_Model):
    """One ResourceClaim of a draResources entry (status.draResourceStatuses)."""

    name: str
    # Comma-separated, as NVIDIA's: deleted, pending, allocated, reserved; or missing (ours) when
    # a resourceClaimName does not exist.
    state: str


class DRAResourceClaimTemplateStatusInfo(_Model):
    """The template a draResources entry's claims are made from, and those claims."""

    name: str
    resource_claim_statuses: list[DRAResourceClaimStatusInfo] | None = None


class DRAResourceStatus(_Model):
    """A draResources entry by its pod claim name: its claim, or its template's claims."""

    name: str
    resource_claim_status: DRAResourceClaimStatusInfo | None = None
    resource_claim_template_status: DRAResourceClaimTemplateStatusInfo | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DRAResourceStatus:
        if (self.resource_claim_status is None) == (self.resource_claim_template_status is None):
            raise ValueError(
                "exactly one of resourceClaimStatus and resourceClaimTemplateStatus must be set"
            )
        return self


class ComputeDomainNodeStatus(_Model):
    """A node of the ComputeDomain, as its driver reports it: the IMEX daemon's readiness."""

    name: str
    clique_id: Annotated[str, Field(alias="cliqueID")]
    status: Literal["Ready", "NotReady"] = "NotReady"


class ComputeDomainStatus(_Model):
    """status.computeDomainStatus: the ComputeDomain of multiNode.computeDomain, as NVIDIA's."""

    name: str
    status: str | None = None
    nodes: list[ComputeDomainNodeStatus] | None = None


class NIMServiceStatus(_Model):
    """Observed state of a NIMService, as written by the operator."""

    observed_generation: int | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    available_replicas: int | None = None
    selector: str | None = None
    endpoint: str | None = None
    model: ModelStatus | None = None
    state: Literal["Pending", "NotReady", "Ready", "Failed"] | None = None
    conditions: list[Condition] | None = None
    autoscaling: AutoscalingStatus | None = None
    # Written only while spec.draResources is set (nim_operator.dra_status).
    dra_resource_statuses: (
        Annotated[list[DRAResourceStatus], Field(max_length=MAX_DRA_RESOURCES)] | None
    ) = None
    # Written only while multiNode.computeDomain is set (nim_operator.compute_domain).
    compute_domain_status: ComputeDomainStatus | None = None
