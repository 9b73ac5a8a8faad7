"""`python -m bench.operator.emulator`: the API-server emulator in a process of its own.

It is tests/support's `ApiServerEmulator` (kmock, taught the API-server semantics the operator
relies on) with every request it serves recorded: when it arrived, who sent it (the User-Agent),
what it asked for, and how long the emulator took to answer it. A second, plain HTTP port serves
those records to the benchmark (`GET /requests?since=<index>`), so request counts come from the
server side, as they would from a real API server's audit log.

A process of its own, so the emulator's Python has a core to itself rather than sharing one GIL
with the benchmark's watches. On start it prints one JSON line: `{"url": ..., "control": ...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock

from tests.support.kmock_apiserver import ApiServerEmulator
from tests.support.kmock_cluster import load_crds


@attrs.define(kw_only=True)
class RecordingEmulator(ApiServerEmulator):
    """The emulator, timing each request it serves (watches excepted: they never end)."""

    service_times: dict[int, float] = attrs.field(factory=dict, init=False)

    async def _handle(self, request: kmock.Request) -> Any:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            return await super()._handle(request)
        finally:
            if request.action != kmock.action.WATCH:
                self.service_times[request.id] = loop.time() - start

    def records(self, since: int) -> list[dict[str, Any]]:
        """What each request since the `since`-th asked for; see `bench.operator.api.Request`."""
        out = []
        for request in self._requests[since:]:
            agent = next((v for k, v in request.headers.items() if k.lower() == "user-agent"), "")
            content = next(
                (v for k, v in request.headers.items() if k.lower() == "content-type"), ""
            )
            out.append(
                {
                    "id": request.id,
                    "at": self.arrival_times.get(request.id),
                    "took": self.service_times.get(request.id),
                    "agent": agent,
                    "method": str(request.method.value) if request.method else "",
                    "action": str(request.action.value).lower() if request.action else "",
                    "resource": request.resource.plural if request.resource else "",
                    "name": request.name or "",
                    "selector": request.params.get("labelSelector", ""),
                    "subresource": request.subresource or "",
                    "content_type": content.split(";")[0].strip(),
                }
            )
        return out


async def serve(crds_dir: Path, host: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with RecordingEmulator() as emulator, kmock.Server(emulator, host=host) as server:
        for crd in load_crds(crds_dir):
            emulator.register_crd(crd)

        async def requests(request: aiohttp.web.Request) -> aiohttp.web.Response:
            since = int(request.query.get("since", "0"))
            return aiohttp.web.json_response(
                {"count": len(emulator._requests), "records": emulator.records(since)}
            )

        control = aiohttp.web.Application()
        control.router.add_get("/requests", requests)
        runner = aiohttp.web.AppRunner(control, access_log=None)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, host, 0)
        await site.start()
        port = runner.addresses[0][1]
        url = str(server.url).rstrip("/")
        print(json.dumps({"url": url, "control": f"http://{host}:{port}"}), flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.operator.emulator", description=__doc__)
    parser.add_argument("--crds", type=Path, required=True, help="directory of CRD YAML files")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.crds, args.host))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
