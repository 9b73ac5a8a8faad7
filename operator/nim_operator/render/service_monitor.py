"""ServiceMonitor (prometheus-operator) `<name>` scraping /v1/metrics, when metrics.enabled.

With `expose.service.metricsPort` it scrapes `/metrics` on the Service port `metrics` instead:
that port is for images with a separate metrics endpoint (Triton serves `/metrics` there).
"""

from __future__ import annotations

from typing import Any

from nim_operator.models import NIMServiceSpec
from nim_operator.render.common import API_PORT_NAME, METRICS_PORT_NAME, Owner, object_meta
from nim_operator.render.labels import child_labels, selector_labels

__all__ = ["METRICS_PATH", "METRICS_PORT_PATH", "render_service_monitor"]

METRICS_PATH = "/v1/metrics"
METRICS_PORT_PATH = "/metrics"


def render_service_monitor(owner: Owner, spec: NIMServiceSpec) -> dict[str, Any] | None:
    if not spec.metrics_enabled():
        return None
    monitor = spec.metrics.service_monitor
    labels = child_labels(owner.name, spec)
    endpoint: dict[str, Any] = {"port": API_PORT_NAME, "path": METRICS_PATH}
    if spec.expose.service.metrics_port is not None:
        endpoint = {"port": METRICS_PORT_NAME, "path": METRICS_PORT_PATH}
    annotations = None
    if monitor is not None:
        # Extra labels let a Prometheus with a serviceMonitorSelector pick this monitor up;
        # ours still win, as everywhere.
        labels = {**(monitor.additional_labels or {}), **labels}
        annotations = monitor.annotations
        if monitor.interval:
            endpoint["interval"] = monitor.interval
        if monitor.scrape_timeout:
            endpoint["scrapeTimeout"] = monitor.scrape_timeout
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": object_meta(owner, owner.name, dict(sorted(labels.items())), annotations),
        "spec": {
            "selector": {"matchLabels": selector_labels(owner.name)},
            "endpoints": [endpoint],
        },
    }
