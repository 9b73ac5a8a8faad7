"""Strict parsing of a server-sent-events body, as an OpenAI client reads it."""

from __future__ import annotations

import json
from typing import Any

DONE = "[DONE]"


def parse_sse(raw: str) -> list[str]:
    """The `data:` payloads of a stream; fails on anything but data events and comments."""
    assert raw.endswith("\n\n"), f"stream must end with a blank line: {raw[-80:]!r}"
    payloads = []
    for event in raw.split("\n\n")[:-1]:
        lines = [line for line in event.split("\n") if not line.startswith(":")]
        if not lines:
            continue  # keep-alive comment
        assert len(lines) == 1, f"one data line per event: {event!r}"
        assert lines[0].startswith("data: "), f"bad SSE event: {event!r}"
        payloads.append(lines[0][len("data: ") :])
    return payloads


def json_events(raw: str) -> list[dict[str, Any]]:
    payloads = parse_sse(raw)
    assert payloads[-1] == DONE, "stream must end with data: [DONE]"
    assert payloads.count(DONE) == 1
    return [json.loads(p) for p in payloads[:-1]]
