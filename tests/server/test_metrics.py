"""Prometheus metrics: NIM names and vLLM's, moving with real traffic."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import chat_body

NIM_NAMES = {
    "num_requests_running",
    "num_requests_waiting",
    "num_request_max",
    "gpu_cache_usage_perc",
    "time_to_first_token_seconds",
    "time_per_output_token_seconds",
    "e2e_request_latency_seconds",
    "prompt_tokens",
    "generation_tokens",
    "request_success",
    "request_failure",
    "request_finish",
}


def scrape(http: httpx.Client, path: str = "/v1/metrics") -> dict[str, float]:
    response = http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


def family_names(http: httpx.Client) -> set[str]:
    return {f.name for f in text_string_to_metric_families(http.get("/metrics").text)}


def test_nim_and_vllm_families_on_both_paths(http: httpx.Client) -> None:
    names = family_names(http)
    assert names >= NIM_NAMES, NIM_NAMES - names
    assert {"vllm:num_requests_running", "vllm:kv_cache_usage_perc"} <= names


def test_counters_move_with_traffic(http: httpx.Client) -> None:
    before = scrape(http)
    assert http.post("/v1/chat/completions", json=chat_body(max_tokens=7)).status_code == 200
    assert http.post("/v1/chat/completions", json=chat_body(model="nope")).status_code == 404
    after = scrape(http)
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == 7
    assert after["generation_tokens_total"] == after["vllm:generation_tokens_total"]
    assert after["prompt_tokens_total"] > before["prompt_tokens_total"]
    assert after["request_success_total"] - before["request_success_total"] == 1
    assert after["request_failure_total"] - before["request_failure_total"] == 1
    assert after["e2e_request_latency_seconds_count"] > before["e2e_request_latency_seconds_count"]
    assert after["num_request_max"] >= 1
    assert after["num_requests_running"] == 0
