"""Ingress `<name>` (networking.k8s.io/v1), from expose.ingress or expose.router.ingress.

Two shapes, as NVIDIA's NIMService has them (the CRD allows only one at a time):

* `expose.ingress` (NVIDIA's first, now deprecated form): the user's IngressSpec, passed through.
  A path without a `backend` (a nimstack addition) goes to this NIMService's Service, port `api`.
* `expose.router.ingress`: one rule for `<name>.<namespace>.<hostDomainName>`, path `/` (Prefix)
  to the Service's port `api`, TLS from `tlsSecretName`.
"""

from __future__ import annotations

from typing import Any

from nim_operator.models import IngressSpec, NIMServiceSpec, RouterSpec
from nim_operator.render.common import API_PORT_NAME, Owner, object_meta
from nim_operator.render.labels import child_labels

__all__ = ["ingress_host", "render_ingress"]


def render_ingress(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    expose = spec.expose
    router = expose.router
    if expose.ingress is not None and expose.ingress.enabled and expose.ingress.spec is not None:
        body = _passed_through(expose.ingress.spec, spec.service_name(owner.name))
        annotations = expose.ingress.annotations
    elif router is not None and router.ingress is not None:
        body = _routed(owner, spec, router)
        annotations = router.annotations
    else:
        return None
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": object_meta(owner, owner.name, child_labels(owner.name, spec), annotations),
        "spec": body,
    }


def _api_backend(service: str) -> dict[str, Any]:
    return {"service": {"name": service, "port": {"name": API_PORT_NAME}}}


def _passed_through(ingress: IngressSpec, service: str) -> dict[str, Any]:
    body = ingress.to_k8s()
    for rule in body.get("rules") or []:
        for path in (rule.get("http") or {}).get("paths") or []:
            path.setdefault("backend", _api_backend(service))
    return body


def _routed(owner: Owner, spec: NIMServiceSpec, router: RouterSpec) -> dict[str, Any]:
    assert router.ingress is not None
    host = router.host(owner.name, owner.namespace)
    rule: dict[str, Any] = {
        "http": {
            "paths": [
                {
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": _api_backend(spec.service_name(owner.name)),
                }
            ]
        }
    }
    if host is not None:
        rule = {"host": host, **rule}
    body: dict[str, Any] = {"ingressClassName": router.ingress.ingress_class, "rules": [rule]}
    if router.ingress.tls_secret_name:
        tls: dict[str, Any] = {"secretName": router.ingress.tls_secret_name}
        if host is not None:
            tls = {"hosts": [host], **tls}
        body["tls"] = [tls]
    return body


def ingress_host(owner: Owner, spec: NIMServiceSpec) -> tuple[str, bool] | None:
    """The host the Ingress routes to the API, and whether TLS covers it; None if it has none.

    For a passed-through spec, the first rule with a host whose paths reach our Service (as
    NVIDIA reports it).
    """
    manifest = render_ingress(owner, spec)
    if manifest is None:
        return None
    body = manifest["spec"]
    service = spec.service_name(owner.name)
    tls_hosts = {h for tls in body.get("tls") or [] for h in tls.get("hosts") or []}
    for rule in body.get("rules") or []:
        host = rule.get("host")
        paths = (rule.get("http") or {}).get("paths") or []
        if host and any(
            (p.get("backend") or {}).get("service", {}).get("name") == service for p in paths
        ):
            return host, host in tls_hosts
    return None
