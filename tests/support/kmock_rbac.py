"""RBAC for the API-server emulator: one ClusterRole enforced for one bearer token, and recorded.

A real API server authorizes every request as (API group, resource[/subresource], verb) and
answers 403 when no rule of the subject's roles grants it. `ClusterRoleAuthorizer` does the same
for the requests that carry `token` (the operator's credentials in a test), against the rules of a
ClusterRole read from a manifest, and records every permission it checked, granted or not. Every
other token is an administrator (the test itself), and non-resource URLs (discovery, /version)
are open, as the default `system:discovery` role makes them for any authenticated user.

Verbs follow the Kubernetes authorization docs: GET of one object is `get`, of a collection
`list`, with `watch=true` `watch`; POST `create`; PUT `update`; PATCH `patch`; DELETE `delete`
(`deletecollection` without a name). A server-side apply that creates the object needs `create`
as well as `patch`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kmock

__all__ = ["ClusterRoleAuthorizer", "Permission", "granted_permissions", "requested_permissions"]


@dataclass(frozen=True, order=True)
class Permission:
    group: str
    resource: str  # plural, or plural/subresource
    verb: str

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}.{self.group or 'core'}"


def granted_permissions(rules: Iterable[Mapping[str, Any]]) -> set[Permission]:
    """Every (group, resource, verb) a ClusterRole's rules grant (wildcards are not expanded)."""
    return {
        Permission(group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


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


class ClusterRoleAuthorizer:
    """Enforce `rules` for requests bearing `token`; remember what was asked and refused."""

    def __init__(self, rules: Sequence[Mapping[str, Any]], *, token: str, user: str) -> None:
        self._granted = granted_permissions(rules)
        self._token = token
        self._user = user
        self._lock = threading.Lock()
        self._used: set[Permission] = set()
        self._denied: list[tuple[Permission, str]] = []

    @property
    def used(self) -> set[Permission]:
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
        for permission in requested_permissions(request, creates=creates):
            with self._lock:
                self._used.add(permission)
            if permission not in self._granted:
                where = f' in the namespace "{request.namespace}"' if request.namespace else ""
                message = (
                    f'{permission.resource} "{request.name or ""}" is forbidden: User '
                    f'"{self._user}" cannot {permission.verb} resource "{permission.resource}" '
                    f'in API group "{permission.group}"{where}'
                )
                with self._lock:
                    self._denied.append((permission, str(request.url.path)))
                return message
        return None
