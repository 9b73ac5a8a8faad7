"""Prometheus metrics: vLLM's own `vllm:*` families plus the unprefixed names NIM 1.x serves.

The NIM names are not a second set of counters: they are re-labelled views of vLLM's families,
read at scrape time, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# vLLM family -> NIM 1.x family (families are named without the `_total` suffix).
NIM_ALIASES: dict[str, tuple[str, ...]] = {
    "vllm:num_requests_running": ("num_requests_running",),
    "vllm:num_requests_waiting": ("num_requests_waiting",),
    "vllm:kv_cache_usage_perc": ("gpu_cache_usage_perc", "kv_cache_usage_perc"),
    "vllm:prompt_tokens": ("prompt_tokens",),
    "vllm:generation_tokens": ("generation_tokens",),
    "vllm:time_to_first_token_seconds": ("time_to_first_token_seconds",),
    "vllm:request_time_per_output_token_seconds": ("time_per_output_token_seconds",),
    "vllm:e2e_request_latency_seconds": ("e2e_request_latency_seconds",),
    "vllm:request_prompt_tokens": ("request_prompt_tokens",),
    "vllm:request_generation_tokens": ("request_generation_tokens",),
    "vllm:request_success": ("request_finish",),
}
# NIM's request_success_total counts requests that finished normally; vLLM's family of that
# name counts every finish reason.
_SUCCESSFUL_FINISHES = frozenset({"stop", "length"})


class NimAliasCollector(Collector):
    """Re-exposes selected families of another registry under NIM's names."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            for alias in NIM_ALIASES.get(family.name, ()):
                yield _renamed(family, alias, family.samples)
            if family.name == "vllm:request_success":
                successes = [
                    s
                    for s in family.samples
                    if s.labels.get("finished_reason") in _SUCCESSFUL_FINISHES
                ]
                yield _renamed(family, "request_success", successes)


def _renamed(family: Metric, name: str, samples: Iterable[object]) -> Metric:
    metric = Metric(name, family.documentation, family.type, family.unit)
    for sample in samples:
        suffix = sample.name[len(family.name) :]  # type: ignore[attr-defined]
        metric.add_sample(
            name + suffix,
            sample.labels,  # type: ignore[attr-defined]
            sample.value,  # type: ignore[attr-defined]
            sample.timestamp,  # type: ignore[attr-defined]
            sample.exemplar,  # type: ignore[attr-defined]
        )
    return metric


class ServerMetrics:
    """The metrics this server adds to vLLM's, in a registry of their own."""

    def __init__(self, source: CollectorRegistry = REGISTRY) -> None:
        self._source = source
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NimAliasCollector(source))
        self.request_failures = Counter(
            "request_failure",
            "Inference requests that ended in an error (4xx or 5xx, in-band included).",
            registry=self.registry,
        )
        self.max_requests = Gauge(
            "num_request_max",
            "Most requests the engine runs concurrently.",
            registry=self.registry,
        )
        self.admitted_sequences = Gauge(
            "num_sequences_admitted",
            "Sequences this server has admitted and not finished (running or waiting).",
            registry=self.registry,
        )
        # vLLM labels its request metrics with the base model only; this tells the adapters
        # apart (label values are served model ids, so there are only as many as those).
        self.model_requests = Counter(
            "model_requests",
            "Inference requests accepted, by the model id they named (the base model or a "
            "LoRA adapter).",
            ["model"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "request_rejected",
            "Requests turned away before reaching the engine (429 at capacity, 503 draining).",
            ["reason"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self._source) + generate_latest(self.registry)
