"""The endpoint picker (EPP) of expose.router.eppConfig: the Gateway API Inference Extension's
per-pool scheduler, which a Gateway asks (Envoy ext-proc over gRPC) which pod of the
InferencePool `<name>` should serve each request.

Like NVIDIA's operator, one picker per NIMService, all named `<name>-epp`: a ServiceAccount, a
Role and RoleBinding letting it read exactly what it watches in this namespace (pods,
InferencePools, InferenceObjectives; nothing else, no writes), a Deployment and a Service; plus
the ConfigMap `<name>-epp-config` when the configuration is given inline (`config`) rather than
as `configMapRef`. Its pods carry a different app.kubernetes.io/name than the server's, so the
NIMService's Service, PDB and InferencePool never select them.

The picker runs under the restricted Pod Security Standard, like the server's extra containers.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from nim_operator.models import EPPConfig, NIMServiceSpec
from nim_operator.render.common import ChildRef, Owner, object_meta
from nim_operator.render.extra_containers import RESTRICTED_CONTAINER_SECURITY_CONTEXT
from nim_operator.render.labels import INSTANCE_LABEL, NAME_LABEL, child_labels

__all__ = [
    "EPP_APP_NAME",
    "EPP_CONFIG_KEY",
    "EPP_ROLE_RULES",
    "config_map_name",
    "endpoint_picker_children",
    "endpoint_picker_name",
    "ext_proc_port",
    "render_epp_config_map",
    "render_epp_deployment",
    "render_epp_role",
    "render_epp_role_binding",
    "render_epp_service",
    "render_epp_service_account",
]

EPP_APP_NAME = "nim-endpoint-picker"
# The key of the operator's ConfigMap, and where the picker reads its configuration.
EPP_CONFIG_KEY = "config.yaml"
CONFIG_MOUNT = "/config"
# The upstream picker's ports: ext-proc (what the InferencePool points at), its gRPC health
# service, and Prometheus metrics.
DEFAULT_PORTS: tuple[tuple[str, int], ...] = (
    ("grpc", 9002),
    ("grpc-health", 9003),
    ("metrics", 9090),
)
EXT_PROC_PORT_NAME = "grpc"
HEALTH_PORT = 9003
# The upstream picker's own health service name, answered on HEALTH_PORT.
HEALTH_SERVICE = "inference-extension"
# As upstream's chart: a picker that goes away mid-stream fails the requests it is steering.
TERMINATION_GRACE_SECONDS = 130
# An EndpointPickerConfig written without these gets them: the picker's loader decodes by kind.
CONFIG_API_VERSION = "inference.networking.x-k8s.io/v1alpha1"
CONFIG_KIND = "EndpointPickerConfig"
# What the picker reads (list/watch through its informers; get as upstream's chart grants it).
# The operator holds each of these itself: Kubernetes refuses a Role granting more than its
# creator has (RBAC escalation prevention).
EPP_ROLE_RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["inference.networking.k8s.io"],
        "resources": ["inferencepools"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["inference.networking.x-k8s.io"],
        "resources": ["inferenceobjectives"],
        "verbs": ["get", "list", "watch"],
    },
)

Manifest = dict[str, Any]


def endpoint_picker_name(owner_name: str) -> str:
    return f"{owner_name}-epp"


def config_map_name(owner_name: str) -> str:
    return f"{owner_name}-epp-config"


def _epp(spec: NIMServiceSpec) -> EPPConfig | None:
    return spec.expose.router.epp_config if spec.expose.router is not None else None


def _selector(owner_name: str) -> dict[str, str]:
    return {INSTANCE_LABEL: owner_name, NAME_LABEL: EPP_APP_NAME}


def _labels(owner_name: str, spec: NIMServiceSpec) -> dict[str, str]:
    labels = child_labels(owner_name, spec)
    labels.update(_selector(owner_name))
    return dict(sorted(labels.items()))


def _ports(epp: EPPConfig) -> list[dict[str, Any]]:
    if not epp.ports:
        return [
            {"name": name, "containerPort": number, "protocol": "TCP"}
            for name, number in DEFAULT_PORTS
        ]
    return [
        {
            **({"name": port.name} if port.name else {}),
            "containerPort": port.container_port,
            "protocol": port.protocol or "TCP",
        }
        for port in epp.ports
    ]


def ext_proc_port(epp: EPPConfig) -> int:
    """The port the Gateway talks ext-proc to: the one named grpc, else the first."""
    ports = _ports(epp)
    named = [port for port in ports if port.get("name") == EXT_PROC_PORT_NAME]
    return int((named or ports)[0]["containerPort"])


def _config_text(epp: EPPConfig) -> str:
    config = dict(epp.config or {})
    config.setdefault("apiVersion", CONFIG_API_VERSION)
    config.setdefault("kind", CONFIG_KIND)
    # JSON is YAML; sorted keys keep the text (and so the pod's checksum) stable.
    return json.dumps(config, sort_keys=True, indent=2) + "\n"


def render_epp_service_account(owner: Owner, spec: NIMServiceSpec) -> Manifest | None:
    if _epp(spec) is None:
        return None
    name = endpoint_picker_name(owner.name)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": object_meta(owner, name, _labels(owner.name, spec)),
    }


def render_epp_role(owner: Owner, spec: NIMServiceSpec) -> Manifest | None:
    if _epp(spec) is None:
        return None
    name = endpoint_picker_name(owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": object_meta(owner, name, _labels(owner.name, spec)),
        "rules": [json.loads(json.dumps(rule)) for rule in EPP_ROLE_RULES],
    }


def render_epp_role_binding(owner: Owner, spec: NIMServiceSpec) -> Manifest | None:
    if _epp(spec) is None:
        return None
    name = endpoint_picker_name(owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": object_meta(owner, name, _labels(owner.name, spec)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }


def render_epp_config_map(owner: Owner, spec: NIMServiceSpec) -> Manifest | None:
    epp = _epp(spec)
    if epp is None or epp.config is None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(owner, config_map_name(owner.name), _labels(owner.name, spec)),
        "data": {EPP_CONFIG_KEY: _config_text(epp)},
    }


def _grpc_health_probe() -> dict[str, Any]:
    return {
        "grpc": {"port": HEALTH_PORT, "service": HEALTH_SERVICE},
        "initialDelaySeconds": 5,
        "periodSeconds": 10,
    }


def _container(owner: Owner, epp: EPPConfig) -> dict[str, Any]:
    extra = epp.container_spec
    config_key = epp.config_map_ref.key if epp.config_map_ref is not None else EPP_CONFIG_KEY
    container: dict[str, Any] = {"name": extra.name, "image": extra.image.reference}
    if extra.image.pull_policy:
        container["imagePullPolicy"] = extra.image.pull_policy
    if extra.command:
        container["command"] = list(extra.command)
    container["args"] = [
        "--pool-name",
        owner.name,
        "--pool-namespace",
        owner.namespace,
        "--config-file",
        f"{CONFIG_MOUNT}/{config_key}",
        *(extra.args or []),
    ]
    container["env"] = [
        {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        *(var.to_k8s() for var in extra.env or []),
    ]
    if extra.working_dir:
        container["workingDir"] = extra.working_dir
    container["ports"] = _ports(epp)
    probes = {
        "startupProbe": epp.startup_probe.to_k8s() if epp.startup_probe else None,
        "readinessProbe": epp.readiness_probe.to_k8s()
        if epp.readiness_probe
        else _grpc_health_probe(),
        "livenessProbe": epp.liveness_probe.to_k8s()
        if epp.liveness_probe
        else _grpc_health_probe(),
    }
    container.update({key: probe for key, probe in probes.items() if probe is not None})
    container["volumeMounts"] = [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}]
    container["securityContext"] = json.loads(json.dumps(RESTRICTED_CONTAINER_SECURITY_CONTEXT))
    return container


def _config_volume(owner: Owner, epp: EPPConfig) -> dict[str, Any]:
    ref = epp.config_map_ref
    if ref is None:
        return {"name": "config", "configMap": {"name": config_map_name(owner.name)}}
    source: dict[str, Any] = {"name": ref.name, "items": [{"key": ref.key, "path": ref.key}]}
    if ref.optional is not None:
        source["optional"] = ref.optional
    return {"name": "config", "configMap": source}


def render_epp_deployment(owner: Owner, spec: NIMServiceSpec) -> Manifest | None:
    epp = _epp(spec)
    if epp is None:
        return None
    name = endpoint_picker_name(owner.name)
    labels = _labels(owner.name, spec)
    template_meta: dict[str, Any] = {"labels": labels}
    if epp.config is not None:
        # A ConfigMap change does not restart a pod: its checksum in the template does.
        digest = hashlib.sha256(_config_text(epp).encode()).hexdigest()[:16]
        template_meta["annotations"] = {"nimstack.dev/epp-config-checksum": digest}
    pod: dict[str, Any] = {
        "serviceAccountName": name,
        # The picker watches pods and its InferencePool: it needs its token.
        "automountServiceAccountToken": True,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "containers": [_container(owner, epp)],
        "volumes": [_config_volume(owner, epp)],
    }
    if epp.container_spec.image.pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in epp.container_spec.image.pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(owner, name, labels),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": _selector(owner.name)},
            "template": {"metadata": template_meta, "spec": pod},
        },
    }


def render_epp_service(owner: Owner, spec: NIMServiceSpec) -> Manifest | None:
    epp = _epp(spec)
    if epp is None:
        return None
    ports = []
    for index, port in enumerate(_ports(epp)):
        entry: dict[str, Any] = {
            "name": port.get("name") or f"port-{index}",
            "port": port["containerPort"],
            "targetPort": port["containerPort"],
            "protocol": port["protocol"],
        }
        if port["containerPort"] == ext_proc_port(epp):
            # ext-proc is gRPC: gateways must speak HTTP/2 to it.
            entry["appProtocol"] = "http2"
        ports.append(entry)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(owner, endpoint_picker_name(owner.name), _labels(owner.name, spec)),
        "spec": {"type": "ClusterIP", "selector": _selector(owner.name), "ports": ports},
    }


def endpoint_picker_children(
    owner: Owner, spec: NIMServiceSpec, *, inference_pools_supported: bool
) -> list[tuple[ChildRef, Manifest | None]]:
    """The picker's children in apply order (None: delete if ours). Without the InferencePool
    API the picker would have no pool to serve, so none is run (and an earlier one goes)."""
    name = endpoint_picker_name(owner.name)
    rbac = "rbac.authorization.k8s.io/v1"
    renderers = (
        (ChildRef("v1", "ServiceAccount", "serviceaccounts", name), render_epp_service_account),
        (ChildRef(rbac, "Role", "roles", name), render_epp_role),
        (ChildRef(rbac, "RoleBinding", "rolebindings", name), render_epp_role_binding),
        (
            ChildRef("v1", "ConfigMap", "configmaps", config_map_name(owner.name)),
            render_epp_config_map,
        ),
        (ChildRef("v1", "Service", "services", name), render_epp_service),
        (ChildRef("apps/v1", "Deployment", "deployments", name), render_epp_deployment),
    )
    return [
        (ref, render(owner, spec) if inference_pools_supported else None)
        for ref, render in renderers
    ]
