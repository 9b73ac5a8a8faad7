"""When a LoRA adapter loaded in the engine may be unloaded: once it is retired and idle.

An adapter stops being served the moment it is removed (or replaced by a reload), but requests
already running on it keep it: unloading it under them would make the engine read the adapter's
directory again at its next step, and that directory may be gone (a failed load there fails
the engine core, not just the request). So each load is counted while requests use it, and the
engine is told to unload it when it is both retired and unused.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nim_server.engine import LoraAdapter

log = logging.getLogger(__name__)


class LoraSlots:
    """The adapters loaded in the engine, the requests using each, and their unloading."""

    def __init__(self, unload: Callable[[LoraAdapter], Coroutine[object, object, None]]) -> None:
        self._unload = unload
        self._served: set[LoraAdapter] = set()
        self._running: Counter[LoraAdapter] = Counter()
        self._retired: set[LoraAdapter] = set()  # no longer served; unloaded when idle
        self._unloading: set[asyncio.Task[None]] = set()  # referenced until done

    def loaded(self, lora: LoraAdapter) -> None:
        """The engine has loaded `lora` and requests may now use it."""
        self._served.add(lora)

    def acquire(self, lora: LoraAdapter) -> bool:
        """Count one more request on `lora`; False when it was retired before the request."""
        if lora not in self._served:
            return False
        self._running[lora] += 1
        return True

    def release(self, lora: LoraAdapter) -> None:
        """A request counted by `acquire` has ended (finished, failed or aborted)."""
        self._running[lora] -= 1
        if self._running[lora] <= 0:
            del self._running[lora]
            if lora in self._retired:
                self._start_unload(lora)

    def retire(self, lora: LoraAdapter) -> int:
        """No new request may use `lora`; it is unloaded once the running ones end.

        Returns how many requests were still running on it.
        """
        if lora not in self._served:
            return 0
        self._served.discard(lora)
        running = self._running[lora]
        if running:
            self._retired.add(lora)
        else:
            self._start_unload(lora)
        return running

    def _start_unload(self, lora: LoraAdapter) -> None:
        self._retired.discard(lora)
        task = asyncio.get_running_loop().create_task(self._unload(lora))
        self._unloading.add(task)
        task.add_done_callback(self._unloaded)

    def _unloaded(self, task: asyncio.Task[None]) -> None:
        self._unloading.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("unloading a LoRA adapter failed", exc_info=task.exception())
