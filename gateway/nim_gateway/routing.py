"""Routing strategies: pure functions of the candidates' loads (no I/O, no clock, no state).

* least-load: the replica with the shortest queue.
* round-robin: each replica in turn, blind to load and prompt: what a plain Kubernetes Service
  gives (kube-proxy spreads connections, not requests, but the effect is the same), kept as the
  baseline the other two are measured against (bench/gateway).
* prefix-affinity: requests that begin alike go to the same replica, whose KV cache already
  holds that prefix (vLLM's prefix caching then skips recomputing it). A consistent-hash ring
  keeps the mapping stable when replicas come and go (only ~1/n of prefixes move), and the
  bounded-load rule of Mirrokni, Thorup and Zadimoghaddam ("Consistent Hashing with Bounded
  Loads", 2017) caps any replica at ceil(c * average load): a hot prefix spills over to the next
  replica on the ring instead of queueing behind itself.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "HashRing",
    "affinity_text",
    "bounded_capacity",
    "pick_least_load",
    "pick_prefix_affinity",
    "pick_round_robin",
    "stable_hash",
]


def stable_hash(text: str) -> int:
    """64 bits of BLAKE2b: stable across processes (unlike hash()), so every gateway replica
    maps a prefix to the same backend."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Nodes placed at `virtual_nodes` points each, so load spreads evenly with few nodes."""

    def __init__(self, nodes: Sequence[str], virtual_nodes: int = 64) -> None:
        points = sorted(
            (stable_hash(f"{node}#{i}"), node) for node in set(nodes) for i in range(virtual_nodes)
        )
        self._hashes = [h for h, _ in points]
        self._nodes = [n for _, n in points]
        self.nodes = frozenset(nodes)

    def walk(self, key_hash: int) -> Iterator[str]:
        """Distinct nodes clockwise from `key_hash`: the owner first, then where it spills."""
        if not self._nodes:
            return
        start = bisect.bisect_left(self._hashes, key_hash)
        seen: set[str] = set()
        for i in range(len(self._nodes)):
            node = self._nodes[(start + i) % len(self._nodes)]
            if node not in seen:
                seen.add(node)
                yield node
                if len(seen) == len(self.nodes):
                    return


def bounded_capacity(total_load: float, nodes: int, factor: float) -> int:
    """The most any node may hold once one more request is placed: ceil(c * (L + 1) / n)."""
    return math.ceil(factor * (total_load + 1) / nodes)


def pick_prefix_affinity(
    ring: HashRing, key: str, loads: Mapping[str, float], factor: float
) -> str:
    """The first node clockwise from hash(key) whose load is below the bounded capacity.

    `loads` holds the candidates (a subset of the ring: replicas in backoff are left out).
    """
    candidates = {node: load for node, load in loads.items() if node in ring.nodes}
    if not candidates:
        raise ValueError("no candidate is on the ring")
    capacity = bounded_capacity(sum(candidates.values()), len(candidates), factor)
    for node in ring.walk(stable_hash(key)):
        if node in candidates and candidates[node] < capacity:
            return node
    # Unreachable while factor > 1 (some node is always below the average), but cheap to keep.
    return min(candidates, key=lambda node: candidates[node])


# KV-cache usage (0..1) differences below this are scrape noise for least-load's choice.
KV_USAGE_TIE = 0.05


def pick_least_load(
    loads: Mapping[str, tuple[float, float]], rng: random.Random | None = None
) -> str:
    """The node with the smallest queue, then the smallest KV-cache usage; ties broken at
    random, so equal replicas share the traffic instead of one of them taking it all.

    KV-cache usage comes from the last scrape, so usages within KV_USAGE_TIE of the lowest
    count as equal: otherwise two idle replicas differing by a stale 0.1 % would send every
    request of a quiet period to the same one.
    """
    if not loads:
        raise ValueError("no candidates")
    least_queue = min(queue for queue, _ in loads.values())
    queued_least = {node: kv for node, (queue, kv) in loads.items() if queue == least_queue}
    least_kv = min(queued_least.values())
    tied = sorted(node for node, kv in queued_least.items() if kv <= least_kv + KV_USAGE_TIE)
    return (rng or random).choice(tied)


def pick_round_robin(nodes: Iterable[str], turn: int) -> str:
    """The `turn`-th node (modulo their number) in sorted order.

    The caller keeps the counter; sorting makes the order independent of how the candidates
    were listed, so consecutive turns visit every node once before any node twice.
    """
    ordered = sorted(set(nodes))
    if not ordered:
        raise ValueError("no candidates")
    return ordered[turn % len(ordered)]


def affinity_text(body: Mapping[str, Any], limit: int, *, after_system_prompt: bool) -> str:
    """The model and the first `limit` characters of the request's prompt.

    The model is part of the key: the same prefix for two models shares no cache.

    `after_system_prompt`: the key is the system prompt (the leading system/developer messages,
    a Responses request's `instructions`) whole, and the first `limit` characters of the one
    message after it. An application's conversations usually all begin with the same long
    system prompt, so a key that ends inside it is one key for all of them; what tells them
    apart is the user's first message, which every later turn resends. The key stops at that
    message's end: the model's first answer, which follows it, is not in the first turn's prompt.
    Otherwise the `limit` characters are counted from the prompt's start, across messages.
    """
    system: list[str] = []
    pieces: list[str] = []
    size = 0
    for piece, part in _prompt_texts(body):
        if after_system_prompt and part is _Part.SYSTEM:
            system.append(piece)
            continue
        if after_system_prompt and part is _Part.LATER:
            break
        pieces.append(piece)
        size += len(piece)
        if size >= limit:
            break
    key = "".join(pieces)[:limit]
    if after_system_prompt:
        return f"{body.get('model', '')}\x00{''.join(system)}\x00{key}"
    return f"{body.get('model', '')}\x00{key}"


class _Part(enum.Enum):
    """Where a piece of the prompt is: in the system prompt it begins with, in the first
    message after that, or later."""

    SYSTEM = enum.auto()
    FIRST = enum.auto()
    LATER = enum.auto()


_INSTRUCTION_ROLES = frozenset({"system", "developer"})


def _prompt_texts(body: Mapping[str, Any]) -> Iterator[tuple[str, _Part]]:
    """The prompt's text pieces in order: chat messages, a completion prompt, a Responses
    input."""
    messages = body.get("messages")
    if isinstance(messages, list):
        yield from _turns(messages)
        return
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        yield prompt, _Part.FIRST
        return
    if isinstance(prompt, list) and prompt:
        # A batch of prompts, or one prompt as token ids: the first element identifies it.
        first = prompt[0] if isinstance(prompt[0], str) else ",".join(map(str, prompt))
        yield first, _Part.FIRST
        return
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        yield instructions, _Part.SYSTEM
    items = body.get("input")
    if isinstance(items, str):
        yield items, _Part.FIRST
    elif isinstance(items, list):
        yield from _turns(items)


def _turns(items: list[Any]) -> Iterator[tuple[str, _Part]]:
    """Chat messages or Responses input items, each as its role and its texts."""
    part = _Part.SYSTEM
    for item in items:
        if not isinstance(item, Mapping):
            continue
        role = item.get("role", item.get("type", ""))
        if part is _Part.SYSTEM and role not in _INSTRUCTION_ROLES:
            part = _Part.FIRST
        elif part is _Part.FIRST:
            part = _Part.LATER
        yield f"{role}:", part
        for text in _content_texts(item.get("content")):
            yield text, part


def _content_texts(content: object) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                yield part["text"]
