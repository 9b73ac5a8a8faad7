"""LoraSlots on its own: when an adapter retired from serving is unloaded from the engine.

The end-to-end proof with the real engine is in test_adapters.py; this covers the orders of
events a test against the server cannot arrange at will (a reload, a request that loses the
race with a removal, several requests ending in turn).
"""

from __future__ import annotations

import asyncio

from nim_server.engine import LoraAdapter
from nim_server.lora_slots import LoraSlots


def adapter(engine_id: int) -> LoraAdapter:
    return LoraAdapter(name="alpha", path="/adapters/alpha", rank=8, engine_id=engine_id)


class Engine:
    """Records what the slots ask the engine to unload (the callback vLLM's remove_lora gets)."""

    def __init__(self) -> None:
        self.unloaded: list[int] = []

    async def unload(self, lora: LoraAdapter) -> None:
        self.unloaded.append(lora.engine_id)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_an_idle_adapter_is_unloaded_when_retired() -> None:
    engine = Engine()
    slots = LoraSlots(engine.unload)
    slots.loaded(adapter(1))
    assert slots.retire(adapter(1)) == 0
    await settle()
    assert engine.unloaded == [1]
    assert slots.retire(adapter(1)) == 0  # twice is harmless
    await settle()
    assert engine.unloaded == [1]


async def test_running_requests_keep_a_retired_adapter_until_the_last_ends() -> None:
    engine = Engine()
    slots = LoraSlots(engine.unload)
    old, new = adapter(1), adapter(2)
    slots.loaded(old)
    assert slots.acquire(old)
    assert slots.acquire(old)
    slots.loaded(new)  # a reload: the new version serves, the old one is retired
    assert slots.retire(old) == 2
    assert not slots.acquire(old)  # rendered before the reload, reached the engine after
    assert slots.acquire(new)
    slots.release(old)
    await settle()
    assert engine.unloaded == []
    slots.release(old)
    await settle()
    assert engine.unloaded == [1]
    slots.release(new)  # the served version stays loaded when its requests end
    await settle()
    assert engine.unloaded == [1]
