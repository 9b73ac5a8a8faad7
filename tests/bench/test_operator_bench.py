"""`python -m bench.operator` runs end to end and measures what it claims, on a tiny N.

The real benchmark (N = 1, 100, 1,000, one-minute idle windows) is not run here; this runs the
same command with N = 2 and a 3-second timer against the API-server emulator, the real operator
process and the no-op baseline, and checks that the numbers it reports are there and plausible.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("operator-bench")
    command = [
        sys.executable,
        "-m",
        "bench.operator",
        *("--counts", "2", "--interval", "3", "--window", "3", "--settle", "0.5"),
        *("--probes", "2", "--backend", "kmock", "--out", str(out)),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nim_operator / a no-op kopf operator" in done.stdout
    assert (out / "operator.png").stat().st_size > 10_000
    assert (out / "operator.md").read_text().startswith("# Operator benchmark")
    data: dict[str, object] = json.loads((out / "operator.json").read_text())
    return data


def test_every_milestone_is_measured(results: dict[str, object]) -> None:
    (result,) = results["results"]  # type: ignore[misc]
    ours = result["ours"]
    assert result["count"] == 2
    # Children appear before the status that reports them, which comes before kopf is done.
    assert 0 < ours["burst.children_p50_s"] <= ours["burst.observed_p50_s"]
    assert ours["burst.observed_p50_s"] <= ours["burst.handled_p50_s"]
    assert 0 < ours["probe.children_p50_s"] < 30
    assert ours["idle.rss_mib"] > 20
    assert ours["idle.cpu_pct"] is not None


def test_timer_ticks_change_nothing_and_requests_are_counted(results: dict[str, object]) -> None:
    (result,) = results["results"]  # type: ignore[misc]
    ours = result["ours"]
    assert ours["idle.changes"] == 0
    assert ours["requests.idle.expected_ticks"] >= 1
    # A tick applies at most the three children (most ticks nothing: the watches prove the
    # applies no-ops).
    assert ours["requests.idle.by_verb_per_tick"].get("apply", 0) <= 3
    assert ours["requests.idle.per_tick"] < 10
    assert ours["requests.burst.per_object"] > ours["requests.burst.reconciles_per_object"]


def test_the_baseline_ran_and_ratios_are_reported(results: dict[str, object]) -> None:
    (result,) = results["results"]  # type: ignore[misc]
    assert result["noop"]["burst.handled_p50_s"] > 0
    assert result["ratios"]["rss"] > 0.5
    names = {check["what"] for check in result["checks"]}
    assert any("RSS" in name for name in names)
    assert all(isinstance(check["pass"], bool | None) for check in result["checks"])


def _registrations(module: str) -> set[tuple[object, ...]]:
    """What kopf would run per object for `module`: each resource handler's kind, resource,
    filters and timing (startup/cleanup activities differ on purpose: the baseline connects
    nothing)."""
    import importlib
    import inspect

    import kopf

    previous = kopf.get_default_registry()
    registry = kopf.OperatorRegistry()
    kopf.set_default_registry(registry)
    try:
        # A fresh import into an empty registry: the decorators register at import time.
        sys.modules.pop(module, None)
        importlib.import_module(module)
    finally:
        kopf.set_default_registry(previous)
        sys.modules.pop(module, None)
    found = set()
    for kind in ("_watching", "_spawning", "_changing", "_indexing", "_webhooks"):
        for handler in getattr(registry, kind).get_all_handlers():
            found.add(
                (
                    kind,
                    str(handler.id),
                    str(getattr(handler, "selector", None)),
                    str(getattr(handler, "labels", None)),
                    str(getattr(handler, "reason", None)),
                    getattr(handler, "interval", None),
                    getattr(handler, "initial_delay", None),
                    getattr(handler, "when", None) is not None,
                    # A sync handler runs in kopf's thread pool: that costs, so it must match.
                    inspect.iscoroutinefunction(handler.fn),
                )
            )
    return found


def test_the_baseline_registers_what_the_operator_registers() -> None:
    """The no-op operator is a fair floor only while it watches and times what ours does."""
    ours = _registrations("nim_operator.handlers")
    noop = _registrations("bench.operator.noop_operator")
    assert len(ours) >= 10
    assert ours == noop


def test_a_new_operator_process_takes_over_without_changing_anything(
    results: dict[str, object],
) -> None:
    (result,) = results["results"]  # type: ignore[misc]
    ours = result["ours"]
    assert ours["restart.changes"] == 0
    assert ours["restart.peak_rss_mib"] >= ours["restart.rss_mib"] > 20
    assert ours["requests.restart.per_object"] > 0  # it read what was there
    assert 0 < ours["restart.resync_s"] < ours["restart.window_s"]
