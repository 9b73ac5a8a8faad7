"""The Gateway API's route CRDs, as far as the operator cares: the kinds exist and store objects.

A real cluster serves HTTPRoute and GRPCRoute (gateway.networking.k8s.io/v1) only once the
Gateway API CRDs are installed; so does the emulator (kmock_apiserver.CRD_ONLY_GROUPS). Tests
install these to turn expose.router.gateway's routes on. Their schemas keep every field: the
operator's routes are checked against the real shape by the renderer tests, not here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GATEWAY_API_CRDS"]


def _route_crd(kind: str, plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.gateway.networking.k8s.io"},
        "spec": {
            "group": "gateway.networking.k8s.io",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


GATEWAY_API_CRDS = (_route_crd("HTTPRoute", "httproutes"), _route_crd("GRPCRoute", "grpcroutes"))
