"""The Gateway API's route CRDs, as far as the operator cares: the kinds exist and store objects.

A real cluster serves HTTPRoute and GRPCRoute (gateway.networking.k8s.io/v1) only once the
Gateway API CRDs are installed; so does the emulator (kmock_apiserver.CRD_ONLY_GROUPS). Tests
install these to turn expose.router.gateway's routes on. Their schemas keep every field: the
operator's routes are checked against the real shape by the renderer tests, not here.
"""

from __future__ import annotations

from tests.support.third_party_crd import third_party_crd

__all__ = ["GATEWAY_API_CRDS"]

GATEWAY_API_CRDS = tuple(
    third_party_crd("gateway.networking.k8s.io", "v1", kind, plural)
    for kind, plural in (("HTTPRoute", "httproutes"), ("GRPCRoute", "grpcroutes"))
)
