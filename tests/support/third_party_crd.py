"""CRDs of other projects (Gateway API, LeaderWorkerSet, ...) for tests to install.

Their kinds are served by a real cluster only once the project's CRD is installed, and so by the
emulator. A test needs the kind to exist and store objects; unless it passes a `schema`, every
field is kept: the operator's objects of these kinds are checked against their real shape by the
renderer tests, not by the CRD.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["KEEP_EVERY_FIELD", "third_party_crd"]

KEEP_EVERY_FIELD: Mapping[str, Any] = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
}


def third_party_crd(
    group: str,
    version: str,
    kind: str,
    plural: str,
    *,
    list_kind: str | None = None,
    schema: Mapping[str, Any] = KEEP_EVERY_FIELD,
) -> dict[str, Any]:
    """A namespaced CRD serving and storing one version of `kind`, with a status subresource."""
    names = {"kind": kind, "plural": plural, "singular": kind.lower()}
    if list_kind is not None:
        names["listKind"] = list_kind
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": names,
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": copy.deepcopy(dict(schema))},
                }
            ],
        },
    }
