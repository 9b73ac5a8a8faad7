"""The Gateway API Inference Extension's InferencePool CRD, as far as the operator cares.

A real cluster serves InferencePool (inference.networking.k8s.io/v1) only once the extension's
CRDs are installed, and so does the emulator (kmock's bundle does not list the group). Tests
install it to turn expose.router.eppConfig's pool and endpoint picker on. Every field is kept:
the operator's InferencePool is checked against the real shape by the renderer tests.
"""

from __future__ import annotations

from tests.support.third_party_crd import third_party_crd

__all__ = ["INFERENCE_POOL_CRD"]

INFERENCE_POOL_CRD = third_party_crd(
    "inference.networking.k8s.io", "v1", "InferencePool", "inferencepools"
)
