"""Responses kept for `GET /v1/responses/{id}` and `previous_response_id`: in memory, per replica.

Bounded by bytes (NIM_RESPONSES_STORE_BYTES), least recently used first out, so a busy server
forgets old responses instead of growing. Nothing is shared between replicas or kept across a
restart: a client that chains responses behind a load balancer needs session affinity (nim-gateway
sends them to the replica holding the id, learned from X-Request-Id), or sends the whole
conversation as `input` (store: false) instead.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from nim_server.protocol_responses import ResponseObject


@dataclass(frozen=True)
class StoredResponse:
    response: ResponseObject
    # The conversation as chat messages up to and including this response's output: what a
    # follow-up with previous_response_id continues from (instructions are not carried over).
    messages: list[dict[str, Any]]
    size: int


class ResponseStore:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._bytes

    def put(self, response: ResponseObject, messages: list[dict[str, Any]]) -> None:
        # The serialised size is what the entry costs, give or take Python's overhead per object.
        size = len(response.model_dump_json()) + len(json.dumps(messages))
        self.delete(response.id)  # a reused client X-Request-Id replaces the older response
        if size > self._max_bytes:
            return  # would evict everything and still not fit
        self._entries[response.id] = StoredResponse(response, messages, size)
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size

    def get(self, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is not None:
            self._entries.move_to_end(response_id)  # a chained conversation stays in
        return entry

    def delete(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True
