"""Where the backends come from: a static list, or NIMServices and their EndpointSlices.

Either way the result is a list of ServiceSpec handed to BackendTable.sync(); the table keeps
what it knows of replicas that stay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, get_args

import yaml

from nim_gateway.backends import BackendTable, ServiceSpec, WakeTarget
from nim_gateway.kube import KubeApi
from nim_gateway.settings import RoutingName

__all__ = [
    "NIMSERVICE_API",
    "ROUTING_ANNOTATION",
    "KubernetesDiscovery",
    "routing_from_annotations",
    "services_from_endpoint_slices",
    "static_services",
    "wake_target",
]

log = logging.getLogger(__name__)

# crds/nimservice.yaml: group nimstack.dev, version v1alpha1, plural nimservices.
NIMSERVICE_API = "/apis/nimstack.dev/v1alpha1"
ENDPOINT_SLICE_API = "/apis/discovery.k8s.io/v1"
# The operator names the Deployment after the NIMService (operator/nim_operator/render).
DEPLOYMENT_API = "/apis/apps/v1"
# The EndpointSlice controller labels each slice with the name of its Service; the operator
# names the Service after the NIMService, or `spec.expose.service.name`
# (operator/nim_operator/render/service.py).
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# ... and names its one port `api`.
API_PORT_NAME = "api"
ROUTING_ANNOTATION = "nimstack.dev/routing"
ROUTINGS: tuple[str, ...] = get_args(RoutingName)


# --- static ------------------------------------------------------------------------------


def static_services(file: Path | None, flags: Iterable[str]) -> list[ServiceSpec]:
    """Services from a YAML/JSON file and from `--backend [name=]URL` flags.

    The file: `services: [{name, urls: [...], routing?, models?}]`. Flags with the same name
    form one service; a flag without a name is a service of its own named after its URL.
    """
    specs: list[ServiceSpec] = []
    if file is not None:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        for entry in data.get("services") or []:
            routing = entry.get("routing")
            if routing is not None and routing not in ROUTINGS:
                raise ValueError(f"{file}: service {entry.get('name')!r}: routing {routing!r}")
            specs.append(
                ServiceSpec(
                    name=str(entry["name"]),
                    urls=tuple(str(u).rstrip("/") for u in entry.get("urls") or []),
                    routing=routing,
                    declared_models=tuple(str(m) for m in entry.get("models") or []),
                )
            )
    grouped: dict[str, list[str]] = {}
    for flag in flags:
        name, sep, url = flag.partition("=")
        if not sep or "://" in name:
            name, url = flag, flag
        grouped.setdefault(name, []).append(url.rstrip("/"))
    specs.extend(ServiceSpec(name, tuple(urls)) for name, urls in grouped.items())
    return specs


# --- Kubernetes ----------------------------------------------------------------------------


def routing_from_annotations(annotations: Mapping[str, str] | None) -> RoutingName | None:
    value = (annotations or {}).get(ROUTING_ANNOTATION)
    if value is None:
        return None
    if value not in ROUTINGS:
        log.warning("ignoring %s=%r (one of %s)", ROUTING_ANNOTATION, value, ", ".join(ROUTINGS))
        return None
    return value  # type: ignore[return-value]  # checked against the Literal's values above


def served_model(nimservice: Mapping[str, Any]) -> str:
    """The model id clients use: status.model.name, else spec.model.servedName, else the name
    (the CRD's default)."""
    status_model = (nimservice.get("status") or {}).get("model") or {}
    spec_model = (nimservice.get("spec") or {}).get("model") or {}
    name: str = status_model.get("name") or spec_model.get("servedName") or ""
    return name or str(nimservice["metadata"]["name"])


def service_name(nimservice: Mapping[str, Any]) -> str:
    """The name of the NIMService's Service: `spec.expose.service.name`, else its own name."""
    exposed = ((nimservice.get("spec") or {}).get("expose") or {}).get("service") or {}
    return str(exposed.get("name") or nimservice["metadata"]["name"])


def wake_target(nimservice: Mapping[str, Any]) -> WakeTarget | None:
    """Where to set replicas 0 -> 1 when a request for a NIMService at zero arrives, if it may
    be at zero: its Deployment's /scale under the built-in autoscaler with minReplicas 0 (the
    count the autoscaler owns), its own /scale for a fixed count with scaleToZeroAfter."""
    meta = nimservice["metadata"]
    spec = nimservice.get("spec") or {}
    namespace, name = str(meta.get("namespace")), str(meta["name"])
    autoscaling = spec.get("autoscaling")
    if isinstance(autoscaling, Mapping):
        if autoscaling.get("minReplicas") != 0:
            return None
        path = f"{DEPLOYMENT_API}/namespaces/{namespace}/deployments/{name}/scale"
        return WakeTarget(namespace, name, path)
    if spec.get("scaleToZeroAfter") is None or (spec.get("scale") or {}).get("enabled"):
        return None
    path = f"{NIMSERVICE_API}/namespaces/{namespace}/nimservices/{name}/scale"
    return WakeTarget(namespace, name, path)


def services_from_endpoint_slices(
    nimservices: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]]
) -> list[ServiceSpec]:
    """One ServiceSpec per NIMService, with the ready addresses of its Service's slices."""
    urls: dict[tuple[str, str], set[str]] = {}
    for item in slices:
        meta = item.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not service:
            continue
        port = _api_port(item.get("ports") or [])
        if port is None:
            continue
        found = urls.setdefault((str(meta.get("namespace")), service), set())
        for endpoint in item.get("endpoints") or []:
            # The API's contract: an unset `ready` means unknown and is to be taken as ready.
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in (endpoint.get("addresses") or [])[:1]:
                host = f"[{address}]" if ":" in address else address
                found.add(f"http://{host}:{port}")
    specs = []
    for nimservice in nimservices:
        meta = nimservice["metadata"]
        namespace = str(meta.get("namespace"))
        specs.append(
            ServiceSpec(
                name=f"{namespace}/{meta['name']}",
                urls=tuple(sorted(urls.get((namespace, service_name(nimservice)), ()))),
                routing=routing_from_annotations(meta.get("annotations")),
                declared_models=(served_model(nimservice),),
                wake=wake_target(nimservice),
            )
        )
    return specs


def _api_port(ports: Iterable[Mapping[str, Any]]) -> int | None:
    numbered = [p for p in ports if p.get("port")]
    for port in numbered:
        if port.get("name") == API_PORT_NAME:
            return int(port["port"])
    return int(numbered[0]["port"]) if len(numbered) == 1 else None


class KubernetesDiscovery:
    """Watches NIMServices and EndpointSlices in `namespaces` (all when empty)."""

    def __init__(self, api: KubeApi, table: BackendTable, namespaces: list[str]) -> None:
        self._api = api
        self._table = table
        self._scopes: list[str | None] = list(namespaces) or [None]
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            "nimservices": {},
            "endpointslices": {},
        }
        self._listed: set[tuple[str, str | None]] = set()
        # Set once every watch has listed once: until then the table is incomplete.
        self.synced = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for scope in self._scopes:
                tasks.create_task(self._follow(NIMSERVICE_API, "nimservices", scope))
                tasks.create_task(self._follow(ENDPOINT_SLICE_API, "endpointslices", scope))

    async def _follow(self, api: str, plural: str, namespace: str | None) -> None:
        path = f"{api}/namespaces/{namespace}/{plural}" if namespace else f"{api}/{plural}"
        store = self._objects[plural]

        def relist(items: list[dict[str, Any]]) -> None:
            for key in [k for k in store if namespace is None or k[0] == namespace]:
                del store[key]
            for item in items:
                store[_key(item)] = item
            self._listed.add((plural, namespace))
            self._publish()

        async for kind, obj in self._api.watch(path, relist=relist):
            if kind == "DELETED":
                store.pop(_key(obj), None)
            elif kind in ("ADDED", "MODIFIED"):
                store[_key(obj)] = obj
            self._publish()

    def _publish(self) -> None:
        specs = services_from_endpoint_slices(
            self._objects["nimservices"].values(), self._objects["endpointslices"].values()
        )
        self._table.sync(specs)
        if len(self._listed) == 2 * len(self._scopes):
            self.synced.set()


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace")), str(meta.get("name"))
