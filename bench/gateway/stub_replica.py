"""A replica stand-in that answers at once, for the gateway's own added latency.

Measured against a real replica, the gateway's added latency carries the engine's jitter (a few
milliseconds on this CPU) and the replica's processes competing with the gateway for the same
two cores. This stub streams a chat answer shaped like nim-serve's (a role chunk, one chunk per
token, a finish chunk, a usage chunk, `[DONE]`) with no engine behind it, in a process of its
own, so the same paired measurement isolates what the gateway itself costs.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import time
from collections.abc import Iterator

import httpx
from aiohttp import web

from bench.gateway.replicas import MODEL_ID

__all__ = ["stub_replica"]


def _chunk(choices: list[dict[str, object]], usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, object] = {"id": "stub", "object": "chat.completion.chunk", "model": MODEL_ID}
    body["choices"] = choices
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n".encode()


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    tokens = int(body.get("max_tokens") or 1)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}]))
    for i in range(tokens):
        await response.write(_chunk([{"index": 0, "delta": {"content": f" t{i}"}}]))
    await response.write(_chunk([{"index": 0, "delta": {}, "finish_reason": "length"}]))
    usage = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}
    await response.write(_chunk([], usage))
    await response.write(b"data: [DONE]\n\n")
    return response


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(text="num_requests_running 0.0\nnum_requests_waiting 0.0\n")


def _serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/v1/chat/completions", _chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


@contextlib.contextmanager
def stub_replica(port: int) -> Iterator[str]:
    """The stub serving on `port`, in its own process; its base URL."""
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,))
    process.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/v1/models", timeout=2).raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or not process.is_alive():
                    raise
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.join(10)
