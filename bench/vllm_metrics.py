"""Read vLLM's own Prometheus metrics from a server's /metrics text (nim-serve and vLLM's server
both export them)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["ttft_histogram"]


def ttft_histogram(metrics_text: str) -> tuple[float, float]:
    """The sum (seconds) and count of vllm:time_to_first_token_seconds, over all its series:
    the engine's own time to first token, from a request's arrival at the engine."""
    totals = {"_sum": 0.0, "_count": 0.0}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "vllm:time_to_first_token_seconds":
            for sample in family.samples:
                suffix = sample.name.removeprefix(family.name)
                if suffix in totals:
                    totals[suffix] += sample.value
    return totals["_sum"], totals["_count"]
