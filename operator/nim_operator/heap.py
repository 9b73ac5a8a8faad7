"""Handing freed heap memory back to the system when a busy spell of reconciles ends.

A burst (1,000 NIMServices applied at once, or a restart listing them all) allocates far more
than the operator keeps: API responses, rendered manifests, kopf's per-event state. Python frees
it, but glibc's malloc keeps most freed pages for reuse, so the pod's resident memory stays at
the burst's high-water mark for good. `malloc_trim` returns the free pages; it walks the heap
(a few milliseconds for the operator's, with the event loop held), so it runs at most once per
`min_interval` and only when no reconcile is running or waiting.

Other C libraries (musl, macOS) have no `malloc_trim`; there this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable

__all__ = ["HeapTrimmer", "libc_malloc_trim"]

log = logging.getLogger(__name__)


def libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim(pad)`, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


class HeapTrimmer:
    def __init__(
        self,
        min_interval: float,
        *,
        trim: Callable[[int], int] | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._min_interval = min_interval
        self._trim = trim
        self._clock = clock
        self._last: float | None = None

    def idle(self) -> bool:
        """Call when the last reconcile in progress ends; True if the heap was trimmed."""
        if self._trim is None:
            return False
        now = self._clock()
        if self._last is not None and now - self._last < self._min_interval:
            return False
        self._last = now
        released = self._trim(0)
        log.debug("Heap trimmed after a busy spell (memory returned: %s)", bool(released))
        return True
