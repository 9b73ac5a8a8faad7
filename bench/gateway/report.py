"""Medians over rounds, ratios against round-robin, bench/results/gateway.{json,md}."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

__all__ = ["BASELINE", "RATIO_METRICS", "merge_rounds", "ratios", "write"]

BASELINE = "round-robin"
# Ratios reported per arm against the baseline; "higher is better" for the first two.
RATIO_METRICS = (
    "throughput_tok_s",
    "prefix_cache_hit_rate",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "latency_p50_s",
    "prompt_tokens_computed",
    "gateway_cpu_us_per_token",
)


def merge_rounds(rounds: list[dict[str, float]]) -> dict[str, float]:
    """The median over rounds of every metric."""
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def ratios(arms: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """Each arm's metrics over round-robin's, measured in the same run."""
    base = arms[BASELINE]
    return {
        arm: {
            metric: round(values[metric] / base[metric], 3) if base[metric] else None
            for metric in RATIO_METRICS
        }
        for arm, values in arms.items()
        if arm != BASELINE
    }


def write(report: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "gateway.md").write_text(text)
    return text


def markdown(report: dict[str, Any]) -> str:
    shape = report["workload"]
    lines = [
        f"Date: {report['date']}, commit {report['source']}. Machine: {report['machine']}; "
        "load average (1, 5, 15 min) "
        f"{report['load_average']['before']} before, {report['load_average']['after']} after.",
        "",
        f"Model {report['model']}, {report['replicas']} `nim-serve` replicas, "
        f"{report['rounds']} round(s), medians over rounds. Workload per arm: "
        f"{shape['conversations']} conversations x {shape['turns']} turns, "
        f"{shape['concurrency']} requests open at most, {shape['max_tokens']} tokens per answer, "
        f"a {shape['system_chars']}-character system prompt common to all, "
        f"{shape['question_chars']}-character questions, a pause of up to "
        f"{shape['think_seconds']} s before each.",
        "",
        "| arm | gateway setting | TTFT p50 ms | TTFT p99 ms | tok/s | prefix-cache hit rate "
        "| prompt tokens computed | busiest replica's share | gateway CPU us/token "
        "| of it forwarding | gateway idle CPU % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, m in report["arms"].items():
        lines.append(
            f"| {arm} | {report['settings'][arm]} | {m['ttft_p50_ms']:.0f} | "
            f"{m['ttft_p99_ms']:.0f} | {m['throughput_tok_s']:.1f} | "
            f"{m['prefix_cache_hit_rate']:.3f} | {m['prompt_tokens_computed']:.0f} | "
            f"{m['busiest_replica_share']:.2f} | {m['gateway_cpu_us_per_token']:.0f} | "
            f"{m['gateway_forwarding_cpu_us_per_token']:.0f} | "
            f"{m['gateway_idle_cpu_percent']:.2f} |"
        )
    lines += [
        "",
        f"Ratios over {BASELINE} (same run): throughput and hit rate above 1, the rest below 1 "
        "favour the arm.",
        "",
        "| arm | " + " | ".join(RATIO_METRICS) + " |",
        "|---|" + "---:|" * len(RATIO_METRICS),
    ]
    for arm, row in report["ratios"].items():
        cells = ["n/a" if row[m] is None else f"{row[m]:.3f}" for m in RATIO_METRICS]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", _overhead(report["gateway_overhead"], "the same idle replica"), ""]
    lines += [_overhead(report["gateway_overhead_stub_replica"], "a stub replica (no engine)")]
    lines.append("")
    cold = report["cold_start"]
    if "skipped" in cold:
        lines.append(f"Cold start: not measured ({cold['skipped']}).")
    else:
        lines.append(
            "Cold start through the gateway's scale from zero (Deployment at 0 on the API-server "
            "emulator, a real replica started when the gateway scales it to 1): request to first "
            f"token {cold['request_to_first_token_s']:.1f} s; without the gateway's part "
            f"{cold['cold_start_without_gateway_s']:.1f} s (the replica's start to ready "
            f"{cold['pod_start_to_ready_s']:.1f} s, its first token "
            f"{cold['replica_first_token_s']:.2f} s); the gateway's part "
            f"{cold['gateway_share_s']:.2f} s (of it request to scale-up "
            f"{cold['request_to_scale_up_s']:.2f} s)."
        )
    return "\n".join(lines) + "\n"


def _overhead(overhead: dict[str, float], against: str) -> str:
    return (
        f"Gateway added latency ({overhead['pairs']} sequential requests each way to {against}, "
        f"{overhead['probe_tokens']}-token streams): "
        f"first token p50 {overhead['added_ttft_p50_ms']:+.2f} ms, "
        f"p99 {overhead['added_ttft_p99_ms']:+.2f} ms "
        f"(direct: {overhead['direct_ttft_p50_ms']:.1f} / "
        f"{overhead['direct_ttft_p99_ms']:.1f} ms); "
        f"whole stream p50 {overhead['added_latency_p50_ms']:+.2f} ms, "
        f"p99 {overhead['added_latency_p99_ms']:+.2f} ms. Median of the paired differences: "
        f"first token {overhead['added_ttft_paired_median_ms']:+.2f} ms (95 % interval "
        f"{overhead['added_ttft_paired_median_ci95_low_ms']:+.2f} to "
        f"{overhead['added_ttft_paired_median_ci95_high_ms']:+.2f}), whole stream "
        f"{overhead['added_latency_paired_median_ms']:+.2f} ms (95 % interval "
        f"{overhead['added_latency_paired_median_ci95_low_ms']:+.2f} to "
        f"{overhead['added_latency_paired_median_ci95_high_ms']:+.2f}). "
        f"Gateway CPU per request {overhead['gateway_cpu_ms_per_request']:.2f} ms."
    )
