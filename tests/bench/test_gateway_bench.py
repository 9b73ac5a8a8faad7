"""`python -m bench.gateway` runs end to end at its smallest size and reports what it should.

The real run (SmolLM2, 16 conversations x 4 turns per arm, two rounds) is not part of the test
run. This one runs the same command on the tiny model: two real `nim-serve` replicas, one
round of three arms with 4 conversations x 3 turns each, 10 request pairs for the added
latency, and a cold start through the gateway's scale from zero on the API-server emulator. It
checks the report's structure, that every number is possible, and the one effect the benchmark
exists to show: with one request open at a time, bounded load never makes prefix affinity spill
(no replica's load, however stale its scrape, reaches ceil(1.25 x (load + 1) / 2) = 2), so every
later turn of a conversation meets its history in its replica's prefix cache, where round robin
sends it to the other replica about half of the time. Fewer prompt tokens computed, a higher
hit rate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# least-load is left out here: a minute less, and nothing it reports is checked differently.
ARMS = {"round-robin", "prefix-affinity", "prefix-affinity-key-from-start"}


@pytest.mark.timeout(600)
def test_gateway_bench_compares_routing_on_real_replicas(tmp_path: Path) -> None:
    # 400-character questions: more than one 128-token KV block of history per turn.
    small = "--conversations 4 --turns 3 --concurrency 1 --max-tokens 8 --system-chars 800 "
    small += "--question-chars 400 --think-seconds 0.3 --overhead-pairs 10 --rounds 1 "
    small += f"--idle-seconds 1 --arms {','.join(sorted(ARMS))} "
    small += f"--out {tmp_path}"
    done = subprocess.run(
        [sys.executable, "-m", "bench.gateway", "--model", "tiny", *small.split()],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gateway.json").read_text())

    assert set(report["arms"]) == ARMS
    assert set(report["ratios"]) == ARMS - {"round-robin"}
    assert len(report["load_average"]["before"]) == 3
    assert report["source"]  # the commit measured
    for arm, metrics in report["arms"].items():
        assert 0 < metrics["prefix_cache_hit_rate"] < 1, arm
        assert metrics["throughput_tok_s"] > 0, arm
        assert 0 < metrics["ttft_p50_ms"] <= metrics["ttft_p99_ms"], arm
        assert metrics["gateway_cpu_us_per_token"] > 0, arm
        forwarding = metrics["gateway_forwarding_cpu_us_per_token"]
        assert 0 <= forwarding <= metrics["gateway_cpu_us_per_token"], arm
        assert 0 <= metrics["gateway_idle_cpu_percent"] < 100, arm
        assert 0.5 <= metrics["busiest_replica_share"] <= 1, arm  # 2 replicas
    for arm, row in report["ratios"].items():
        for metric, ratio in row.items():
            assert ratio is not None, (arm, metric)
            assert ratio > 0, (arm, metric)
        base, this = report["arms"]["round-robin"], report["arms"][arm]
        assert row["throughput_tok_s"] == pytest.approx(
            this["throughput_tok_s"] / base["throughput_tok_s"], rel=0.01
        )
    # Each arm computes the system prompt on every replica it reaches, once, then reuses it;
    # round robin reuses a conversation's history only when a turn lands where the last one did.
    rr, keyed = report["arms"]["round-robin"], report["arms"]["prefix-affinity"]
    assert keyed["prefix_cache_hit_rate"] > rr["prefix_cache_hit_rate"]
    assert keyed["prompt_tokens_computed"] < rr["prompt_tokens_computed"]
    # The default key is counted after the system prompt; the other arm's is all system prompt.
    assert "PREFIX_CHARS_FROM=after-system-prompt" in report["settings"]["prefix-affinity"]
    assert "PREFIX_CHARS_FROM=start" in report["settings"]["prefix-affinity-key-from-start"]

    for against in ("gateway_overhead", "gateway_overhead_stub_replica"):
        overhead = report[against]
        assert overhead["pairs"] == 10
        assert overhead["direct_ttft_p50_ms"] > 0
        assert overhead["gateway_cpu_ms_per_request"] > 0
        # Through the gateway to an idle replica on loopback: nowhere near a second either way.
        assert abs(overhead["added_ttft_p50_ms"]) < 1000
        low, high = (overhead[f"added_ttft_paired_median_ci95_{e}_ms"] for e in ("low", "high"))
        assert low <= overhead["added_ttft_paired_median_ms"] <= high
    # The stub answers at once: its direct first token is far faster than the engine's.
    stub = report["gateway_overhead_stub_replica"]
    assert stub["direct_ttft_p50_ms"] < report["gateway_overhead"]["direct_ttft_p50_ms"]

    # Through the gateway's scale from zero: the parts add up, and the replica's start (tens
    # of seconds of loading) is most of it.
    cold = report["cold_start"]
    assert cold["request_to_first_token_s"] == pytest.approx(
        cold["cold_start_without_gateway_s"] + cold["gateway_share_s"], abs=0.01
    )
    assert 0 < cold["request_to_scale_up_s"] < cold["pod_start_to_ready_s"]
    assert 0 < cold["replica_first_token_s"] < cold["slice_published_to_first_token_s"]
    assert cold["gateway_share_s"] < cold["pod_start_to_ready_s"]

    text = (tmp_path / "gateway.md").read_text()
    assert "| arm | gateway setting |" in text
    assert "Cold start" in text
