"""LoRA adapters from NIM_PEFT_SOURCE: found by scanning, served by the engine, kept in step.

NIM's layout: one sub-directory per adapter, named as the model id clients send, holding
`adapter_config.json` (PEFT's) and the weights. A directory that cannot be served is skipped
with one log line saying why; it is tried again once its files change.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from nim_server.engine import EngineDead, EngineRequestError, EngineState, InferenceEngine

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")

# What identifies one version of an adapter's files: (name, size, mtime) of each file.
Signature = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class AdapterDir:
    name: str
    path: Path
    signature: Signature
    rank: int | None = None  # None when `problem` is set
    problem: str | None = None  # why this directory cannot be served


def scan_adapters(source: Path, max_rank: int) -> list[AdapterDir]:
    """Every adapter directory under `source`, with the reason when one is unusable."""
    found = []
    for path in sorted(source.iterdir()):
        # Hidden entries are work in progress (a copy that is renamed into place when it is
        # complete) or a mount's own bookkeeping (a ConfigMap's ..data).
        if path.name.startswith(".") or not path.is_dir():
            continue
        signature = _signature(path)
        rank, problem = _check(path, max_rank)
        found.append(AdapterDir(path.name, path, signature, rank, problem))
    return found


def _signature(path: Path) -> Signature:
    entries = []
    for file in sorted(path.iterdir()):
        try:
            stat = file.stat()
        except OSError:  # deleted while we looked
            continue
        entries.append((file.name, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def _check(path: Path, max_rank: int) -> tuple[int | None, str | None]:
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        return None, f"it has no {CONFIG_FILE}"
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        return None, f"it has no weights ({' or '.join(WEIGHT_FILES)})"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, f"{CONFIG_FILE} is not readable JSON: {error}"
    if not isinstance(config, dict):
        return None, f"{CONFIG_FILE} is not a JSON object"
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and r > 0 for r in ranks):
        return None, f"{CONFIG_FILE} has no valid rank `r`"
    rank = max(ranks)
    if rank > max_rank:
        return None, f"its rank {rank} is above NIM_MAX_LORA_RANK ({max_rank})"
    return rank, None


class AdapterRegistry:
    """Keeps the engine's served adapters equal to the usable directories in the source."""

    def __init__(
        self, engine: InferenceEngine, source: Path, max_rank: int, interval: float | None
    ) -> None:
        self._engine = engine
        self._source = source
        self._max_rank = max_rank
        self._interval = interval
        self._served: dict[str, Signature] = {}
        self._refused: dict[str, Signature] = {}  # logged once per version of the files
        self.scanned = False  # the adapters present at start are served (or refused)

    async def run(self) -> None:
        """Serve the adapters present now; then rescan every interval, if one is set."""
        while self._engine.check_health() is EngineState.READY:
            try:
                await self.refresh()
            except EngineDead:
                return
            except Exception:  # one bad scan must not end the refreshing for good
                log.exception("scanning the LoRA adapters in %s failed", self._source)
            # Even after a failed first scan: the base model can be served meanwhile.
            self.scanned = True
            if self._interval is None:
                return
            await asyncio.sleep(self._interval)

    async def refresh(self) -> None:
        try:
            found = await asyncio.to_thread(scan_adapters, self._source, self._max_rank)
        except OSError as error:
            # A storage hiccup is not "every adapter was deleted": keep serving what we have.
            log.error("cannot read NIM_PEFT_SOURCE %s: %s", self._source, error)
            return
        present = {adapter.name for adapter in found if adapter.problem is None}
        for name in set(self._refused) - {adapter.name for adapter in found}:
            del self._refused[name]  # gone: if it comes back, say again what is wrong
        for name in sorted(set(self._served) - present):
            self._engine.remove_adapter(name)
            del self._served[name]
            log.info("LoRA adapter %s removed: its directory is gone or no longer usable", name)
        for adapter in found:
            await self._update(adapter)

    async def _update(self, adapter: AdapterDir) -> None:
        name = adapter.name
        if adapter.signature in (self._served.get(name), self._refused.get(name)):
            return
        problem = adapter.problem
        if problem is None and name == self._engine.model.name:
            problem = "its name is the base model's id"
        if problem is None:
            assert adapter.rank is not None
            try:
                await self._engine.add_adapter(name, str(adapter.path), adapter.rank)
            except EngineRequestError as error:
                problem = f"the engine refused it: {error}"
        if problem is not None:
            self._refused[name] = adapter.signature
            log.warning("LoRA adapter %s in %s skipped: %s", name, adapter.path, problem)
            return
        action = "reloaded" if name in self._served else "serving"
        self._served[name] = adapter.signature
        self._refused.pop(name, None)
        log.info("%s LoRA adapter %s (rank %d, from %s)", action, name, adapter.rank, adapter.path)
