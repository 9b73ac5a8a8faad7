"""Serialising stream chunks: the per-token hot path, so plain dicts and one `json` call.

The wire shape is the one `protocol.ChatCompletionChunk` / `protocol.CompletionResponse`
describe; the streaming tests validate every chunk against those models.
"""

from __future__ import annotations

import json
from typing import Any

from nim_server.protocol import Usage

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ChunkEncoder:
    def __init__(self, request_id: str, created: int, model: str, object_name: str) -> None:
        self._head = {"id": request_id, "object": object_name, "created": created, "model": model}

    def encode(self, choices: list[dict[str, Any]], totals: Usage | None = None) -> str:
        return _encode(
            {
                **self._head,
                "choices": choices,
                "usage": totals.model_dump() if totals is not None else None,
                "system_fingerprint": None,
            }
        )
