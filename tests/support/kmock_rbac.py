"""RBAC for the API-server emulator: the roles bound to one bearer token enforced, and recorded.

A real API server authorizes every request as (API group, resource[/subresource], verb, and the
namespace and name it is about) and answers 403 when no rule of the subject's roles grants it.
`RbacAuthorizer` does the same for the requests that carry `token` (the operator's credentials
in a test), against what the manifests bind to its ServiceAccount (`bound_permissions`:
ClusterRoles through ClusterRoleBindings, Roles through RoleBindings in their namespace, with
`resourceNames`), and records every grant a request used and every request refused. Every other
token is an administrator (the test itself), and non-resource URLs (discovery, /version) are
open, as the default `system:discovery` role makes them for any authenticated user.

Verbs follow the Kubernetes authorization docs: GET of one object is `get`, of a collection
`list`, with `watch=true` `watch`; POST `create`; PUT `update`; PATCH `patch`; DELETE `delete`
(`deletecollection` without a name). A server-side apply that creates the object needs `create`
as well as `patch`. A create has no name to match (POST goes to the collection), so a rule with
`resourceNames` never grants it, as on a real API server.

Creating or changing a Role is also subject to RBAC's escalation prevention: the API server
refuses a Role granting anything its writer does not hold itself (in that namespace), so each
of the Role's permissions must be granted too, and counts as used. (A RoleBinding's check, that
the writer holds what the bound role grants, is not emulated: it would need the stored Role.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import kmock

__all__ = [
    "Permission",
    "RbacAuthorizer",
    "bound_permissions",
    "granted_permissions",
    "requested_permissions",
]


RBAC_GROUP = "rbac.authorization.k8s.io"


@dataclass(frozen=True, order=True)
class Permission:
    group: str
    resource: str  # plural, or plural/subresource
    verb: str
    namespace: str = ""  # empty: in every namespace (a ClusterRole bound cluster-wide)
    name: str = ""  # empty: any object (a rule without resourceNames)

    def __str__(self) -> str:
        text = f"{self.verb} {self.resource}.{self.group or 'core'}"
        if self.name:
            text += f' "{self.name}"'
        return text + (f" in {self.namespace}" if self.namespace else "")


def granted_permissions(rules: Iterable[Mapping[str, Any]], namespace: str = "") -> set[Permission]:
    """Every permission a role's rules grant (wildcards are not expanded), in `namespace`."""
    return {
        Permission(group, resource, verb, namespace, name)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
        for name in rule.get("resourceNames") or [""]
    }


def bound_permissions(
    documents: Iterable[Mapping[str, Any]], *, namespace: str, service_account: str
) -> set[Permission]:
    """What the RBAC objects among `documents` grant the ServiceAccount `namespace/name`."""
    documents = list(documents)
    roles = {
        (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]): doc
        for doc in documents
        if doc.get("kind") in ("ClusterRole", "Role")
    }
    subject = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
    granted: set[Permission] = set()
    for binding in documents:
        if binding.get("kind") not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if subject not in binding.get("subjects", []):
            continue
        where = binding["metadata"].get("namespace", "") if binding["kind"] == "RoleBinding" else ""
        ref = binding["roleRef"]
        role = roles.get((ref["kind"], where if ref["kind"] == "Role" else "", ref["name"]))
        if role is not None:
            granted |= granted_permissions(role.get("rules", []), where)
    return granted


def _bearer(request: kmock.Request) -> str | None:
    for key, value in request.headers.items():
        if key.lower() == "authorization" and value.lower().startswith("bearer "):
            return value.split(" ", 1)[1].strip()
    return None


def requested_permissions(request: kmock.Request, *, creates: bool) -> list[Permission]:
    """What authorizing this request takes; empty for non-resource URLs."""
    resource = request.resource
    if resource is None or not resource.plural:
        return []
    group = resource.group or ""
    plural = str(resource.plural)
    if request.subresource:
        plural = f"{plural}/{request.subresource}"
    method = str(request.method.value if hasattr(request.method, "value") else request.method)
    method = method.upper()
    named = request.name is not None
    if method == "GET":
        if named:
            verb = "get"
        elif str(request.params.get("watch", "")).lower() in ("true", "1"):
            verb = "watch"
        else:
            verb = "list"
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
    permissions = [Permission(group, plural, verb)]
    if creates:
        permissions.append(Permission(group, plural, "create"))
    return permissions


class RbacAuthorizer:
    """Enforce `granted` for requests bearing `token`; remember what was used and refused."""

    def __init__(self, granted: Iterable[Permission], *, token: str, user: str) -> None:
        self._granted = set(granted)
        self._token = token
        self._user = user
        self._lock = threading.Lock()
        self._used: set[Permission] = set()
        self._denied: list[tuple[Permission, str]] = []

    @property
    def used(self) -> set[Permission]:
        """The grants requests used, and the permissions of refused requests."""
        with self._lock:
            return set(self._used)

    @property
    def denied(self) -> list[tuple[Permission, str]]:
        with self._lock:
            return list(self._denied)

    def authorize(self, request: kmock.Request, *, creates: bool) -> str | None:
        """None when allowed, else the API server's Forbidden message."""
        if _bearer(request) != self._token:
            return None
        namespace, name = request.namespace or "", request.name or ""
        for wanted in requested_permissions(request, creates=creates):
            grant = self._grant_for(wanted, namespace, name)
            with self._lock:
                self._used.add(grant or replace(wanted, namespace=namespace, name=name))
            if grant is None:
                where = f' in the namespace "{namespace}"' if namespace else ""
                message = (
                    f'{wanted.resource} "{name}" is forbidden: User '
                    f'"{self._user}" cannot {wanted.verb} resource "{wanted.resource}" '
                    f'in API group "{wanted.group}"{where}'
                )
                with self._lock:
                    self._denied.append((wanted, str(request.url.path)))
                return message
        return self._escalation(request, namespace)

    def _escalation(self, request: kmock.Request, namespace: str) -> str | None:
        """The refusal of a Role write that grants what the writer does not hold, if it does."""
        resource = request.resource
        method = str(request.method.value if hasattr(request.method, "value") else request.method)
        if resource is None or method.upper() not in ("POST", "PUT", "PATCH"):
            return None
        if (resource.group, str(resource.plural)) != (RBAC_GROUP, "roles"):
            return None
        body = request.data
        rules = body.get("rules") if isinstance(body, Mapping) else None
        for wanted in sorted(granted_permissions(rules or [])):
            grant = self._grant_for(wanted, namespace, wanted.name)
            with self._lock:
                self._used.add(grant or replace(wanted, namespace=namespace))
            if grant is None:
                with self._lock:
                    self._denied.append((replace(wanted, namespace=namespace), "escalation"))
                return (
                    f'roles.rbac.authorization.k8s.io "{request.name or ""}" is forbidden: user '
                    f'"{self._user}" is attempting to grant RBAC permissions not currently held: '
                    f"{wanted}"
                )
        return None

    def _grant_for(self, wanted: Permission, namespace: str, name: str) -> Permission | None:
        """The most general grant that allows `wanted` on `namespace/name`, if any."""
        for scope in ("", namespace):
            for object_name in ("", name):
                grant = replace(wanted, namespace=scope, name=object_name)
                if grant in self._granted:
                    return grant
        return None
