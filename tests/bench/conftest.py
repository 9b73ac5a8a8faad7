"""The end-to-end benchmark runs (marked `bench_run`) take minutes each on real servers: they run
only when asked for, `python -m pytest -m bench_run tests/bench`, so that the test command stays
well inside CI's time. Everything else here (the benchmarks' own logic, the operator benchmark
on the emulator) runs with the rest of the tests."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "bench_run" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="a benchmark run: python -m pytest -m bench_run tests/bench")
    for item in items:
        if "bench_run" in item.keywords:
            item.add_marker(skip)
