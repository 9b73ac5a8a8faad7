"""Probes of the NIM container, matched to the server's health endpoints.

Model loads take minutes, and a busy server can answer a health check slowly: the startup budget
is 20 minutes and every timeout 5 s (NVIDIA's 1 s timeouts restart healthy pods under load).
"""

from __future__ import annotations

from typing import Any

from nim_operator.models import NIMServiceSpec, ProbeSpec
from nim_operator.render.common import API_PORT_NAME

__all__ = [
    "LIVE_PATH",
    "READY_PATH",
    "default_liveness_probe",
    "default_readiness_probe",
    "default_startup_probe",
    "startup_budget_seconds",
]

READY_PATH = "/v1/health/ready"
LIVE_PATH = "/v1/health/live"
PROBE_TIMEOUT_SECONDS = 5
PROBE_PERIOD_SECONDS = 10
STARTUP_FAILURE_THRESHOLD = 120  # x 10 s period = 20 minutes to download and load a model


def _http_probe(path: str, *, failure_threshold: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": API_PORT_NAME, "scheme": "HTTP"},
        "periodSeconds": PROBE_PERIOD_SECONDS,
        "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
        "successThreshold": 1,
        "failureThreshold": failure_threshold,
    }


def default_startup_probe() -> dict[str, Any]:
    return _http_probe(READY_PATH, failure_threshold=STARTUP_FAILURE_THRESHOLD)


def default_readiness_probe() -> dict[str, Any]:
    return _http_probe(READY_PATH, failure_threshold=3)


def default_liveness_probe() -> dict[str, Any]:
    return _http_probe(LIVE_PATH, failure_threshold=3)


DEFAULTED_AT_ZERO = frozenset(
    {"timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold"}
)


def effective_probe(setting: ProbeSpec, default: dict[str, Any]) -> dict[str, Any] | None:
    """The user's probe replaces the default whole; `enabled: false` removes the probe."""
    if not setting.enabled:
        return None
    if setting.probe is not None:
        probe = setting.probe.to_k8s()
        # 0 is Kubernetes' "unset" for these (NVIDIA's CRD passes it on); the API server would
        # store its default instead, so leave the field out and the applied object stays stable.
        return {
            key: value
            for key, value in probe.items()
            if not (key in DEFAULTED_AT_ZERO and value == 0)
        }
    return default


def container_probes(spec: NIMServiceSpec) -> dict[str, dict[str, Any]]:
    """`startupProbe`/`readinessProbe`/`livenessProbe` keys for the container, enabled ones only."""
    candidates = {
        "startupProbe": effective_probe(spec.startup_probe, default_startup_probe()),
        "readinessProbe": effective_probe(spec.readiness_probe, default_readiness_probe()),
        "livenessProbe": effective_probe(spec.liveness_probe, default_liveness_probe()),
    }
    return {key: probe for key, probe in candidates.items() if probe is not None}


def startup_budget_seconds(spec: NIMServiceSpec) -> int:
    """Longest time a pod may take to become ready before its startup probe gives up."""
    probe = effective_probe(spec.startup_probe, default_startup_probe())
    if probe is None:
        return 0
    return int(probe.get("initialDelaySeconds", 0)) + int(probe.get("periodSeconds", 10)) * int(
        probe.get("failureThreshold", 3)
    )
