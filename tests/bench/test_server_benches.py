"""`python -m bench.server` and `python -m bench.soak` run end to end on small settings.

The real runs (two models, two rounds; 2,000 requests) are not part of the test run. These run
the same commands on the tiny model only - one A/B round against `vllm serve`, and a 120-request
soak - and check that what they report is there and consistent, so a fresh clone can run them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_bench(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )


@pytest.mark.timeout(1500)
def test_server_bench_compares_both_servers(tmp_path: Path) -> None:
    done = run_bench("bench.server", "--models", "tiny", "--rounds", "1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "server.json").read_text())
    table = report["models"]["tiny"]
    assert set(table) >= {"8 x 1 json", "1 stream x 128", "32 x 128 stream", "32 x 128 json"}
    assert "rss_mib" in table
    assert set(table["1 stream x 128"]) >= {
        "throughput_tok_s",
        "ttft_p50_ms",
        "ttft_api_overhead_ms",
        "itl_p99_ms",
    }
    assert "api_cpu_us_per_token" in table["8 x 64 json"]  # every workload, streamed or not
    for workload, metrics in table.items():
        for metric, row in metrics.items():
            assert row["ours"] > 0, (workload, metric)
            assert row["theirs"] > 0, (workload, metric)
            # The table rounds each side to 2 decimals; the ratio is of the unrounded values.
            rounding = 0.005 * (1 + row["ratio"]) / row["theirs"]
            assert row["ratio"] == pytest.approx(row["ours"] / row["theirs"], abs=rounding + 0.01)
    assert table["rss_mib"]["tree"]["ours"] > 100  # the engine's process tree, not just uvicorn
    assert (tmp_path / "server.png").stat().st_size > 10_000
    assert "| workload | metric | ours | vllm serve | ours/theirs |" in done.stdout


@pytest.mark.timeout(1500)
def test_soak_finds_no_violations(tmp_path: Path) -> None:
    done = run_bench(
        "bench.soak", "--requests", "120", "--concurrency", "8", "--out", str(tmp_path)
    )
    report = json.loads((tmp_path / "soak.json").read_text())
    assert done.returncode == 0, (report["violations"], done.stderr[-3000:])
    assert report["requests"] == 120
    assert sum(report["outcomes"].values()) == 120
    assert report["outcomes"].get("abandoned", 0) > 0  # some streams were cut off on purpose
    assert report["in_flight_at_end"] == 0
    assert report["violations"] == []
