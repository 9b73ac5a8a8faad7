"""Which replica stored which OpenAI Response: a bounded map, least recently used first out.

nim-serve keeps a stored response (for `GET /v1/responses/{id}` and `previous_response_id`) in
the memory of the one replica that created it. The gateway learns where from the answer to
`POST /v1/responses`: nim-serve names the response's id in its `X-Request-Id` header, streamed
or not, so the gateway never has to read the body it passes through. No I/O here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RECENT_MISSES_ENTRIES",
    "RecentMisses",
    "ResponseAffinity",
    "StoredAt",
    "asks_to_store",
    "previous_response_id",
    "stored_response_id",
]

# nim-serve's ids are `resp-<hex or the client's X-Request-Id>`, OpenAI's `resp_<...>`: another
# kind of id in the header (a server that echoes the client's own) is not a response's.
_RESPONSE_ID_PREFIX = "resp"
# Unknown ids remembered at once, per gateway pod (about 150 bytes each): enough for every id a
# client fleet polls in one short ttl; a flood of made-up ids only pushes out the oldest.
RECENT_MISSES_ENTRIES = 10_000


@dataclass(frozen=True)
class StoredAt:
    """The replica (its base URL) holding a stored response, and the model that answered it."""

    url: str
    model: str


class ResponseAffinity:
    def __init__(self, max_entries: int) -> None:
        # 0 turns learning off (every id is then found by asking the replicas).
        self._max_entries = max_entries
        self._entries: OrderedDict[str, StoredAt] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, response_id: str, url: str, model: str) -> None:
        if self._max_entries <= 0:
            return
        self._entries[response_id] = StoredAt(url, model)
        self._entries.move_to_end(response_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredAt | None:
        stored = self._entries.get(response_id)
        if stored is not None:
            self._entries.move_to_end(response_id)  # a conversation being continued stays in
        return stored

    def forget(self, response_id: str) -> None:
        self._entries.pop(response_id, None)


class RecentMisses:
    """Response ids that no replica held when last asked, each remembered for `ttl` seconds.

    Finding an id this gateway pod did not see created asks every replica; without this a
    client polling for an unknown id (a typo, a deleted response, another cluster's id) would
    do that on every request. At most `max_entries` are kept, the oldest dropped first; all live
    equally long, so the oldest is also the first to expire.
    """

    def __init__(self, max_entries: int, ttl: float) -> None:
        # ttl 0 turns the cache off: every lookup asks the replicas.
        self._max_entries = max_entries if ttl > 0 else 0
        self._ttl = ttl
        # response id -> (when the miss expires, the model whose replicas were asked; None: all).
        self._entries: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, response_id: str, model: str | None, now: float) -> None:
        if self._max_entries <= 0:
            return
        previous = self._entries.pop(response_id, None)
        if previous is not None and previous[1] is None:
            model = None  # every replica said no then: still the wider answer
        self._entries[response_id] = (now + self._ttl, model)
        self._drop_expired(now)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def recent(self, response_id: str, model: str | None, now: float) -> bool:
        """Whether the replicas (those serving `model`, when given) said no less than ttl ago."""
        self._drop_expired(now)
        entry = self._entries.get(response_id)
        return entry is not None and entry[1] in (None, model)

    def discard(self, response_id: str) -> None:
        """The id was just created through this gateway pod: no longer a miss."""
        self._entries.pop(response_id, None)

    def _drop_expired(self, now: float) -> None:
        while self._entries and next(iter(self._entries.values()))[0] <= now:
            self._entries.popitem(last=False)


def asks_to_store(body: Mapping[str, Any]) -> bool:
    """OpenAI's default is to store; only an explicit `store: false` opts out."""
    return body.get("store") is not False


def previous_response_id(body: Mapping[str, Any]) -> str | None:
    value = body.get("previous_response_id")
    return value if isinstance(value, str) and value else None


def stored_response_id(headers: Mapping[str, str]) -> str | None:
    """The id of the response a replica created, from its answer's headers."""
    value = headers.get("x-request-id", "")
    return value if value.startswith(_RESPONSE_ID_PREFIX) else None
