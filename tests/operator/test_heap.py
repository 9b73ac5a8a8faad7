"""nim_operator.heap: when the operator hands freed heap memory back to the system.

The trim function is recorded here (what it releases depends on the process's heap); one test
calls glibc's real `malloc_trim` where the C library is glibc.
"""

from __future__ import annotations

import platform

import pytest

from nim_operator.heap import HeapTrimmer, libc_malloc_trim


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_trims_when_first_idle_then_at_most_once_per_interval() -> None:
    clock, pads = Clock(), []
    trimmer = HeapTrimmer(60.0, trim=lambda pad: pads.append(pad) or 1, clock=clock)

    assert trimmer.idle() is True
    clock.now += 59.0
    assert trimmer.idle() is False  # a timer tick 59 s later: too soon
    clock.now += 1.0
    assert trimmer.idle() is True
    assert pads == [0, 0]  # pad 0: keep nothing spare at the top of the heap


def test_without_malloc_trim_nothing_happens() -> None:
    assert HeapTrimmer(0.0, trim=None).idle() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_malloc_trim_is_found_and_runs() -> None:
    trim = libc_malloc_trim()
    assert trim is not None
    garbage = [bytes(4096) for _ in range(10_000)]  # ~40 MB, freed again below
    del garbage
    assert trim(0) in (0, 1)  # 1: memory was returned, 0: there was none to return
