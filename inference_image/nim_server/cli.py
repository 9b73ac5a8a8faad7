"""`nim-serve`: start the HTTP server at once, load the model behind it, drain on SIGTERM.

`nim-serve download` instead fills the model cache and exits (nim_server.download).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from types import FrameType

import uvicorn
import uvloop
from sse_starlette.sse import AppStatus

from nim_server.admission import Admission
from nim_server.app import build_app
from nim_server.engine import EngineState, VllmEngine
from nim_server.engine_args import passthrough_overrides
from nim_server.log_setup import configure_logging
from nim_server.routes.dependencies import Services
from nim_server.serving.reasoning import ReasoningSettings
from nim_server.serving.tools import ToolSettings
from nim_server.settings import Settings, SettingsError, load_settings

log = logging.getLogger("nim_server")

# Exit code when the model could not be loaded: the kubelet restarts the container and
# `kubectl describe pod` shows the failure.
EXIT_ENGINE_FAILED = 3
# uvicorn's own wait for connections after our drain; the drain already emptied them.
UVICORN_GRACE_SECONDS = 5
KEEP_ALIVE_SECONDS = 75


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["download"]:
        # `nim-serve download --help`: fill the model cache and exit (what a NIMCache's Job runs).
        from nim_server.download import main as download

        sys.exit(download(args[1:]))
    try:
        settings = load_settings(args)
        ToolSettings.from_settings(settings).check()
        ReasoningSettings.from_settings(settings).check()
        passthrough_overrides(settings.passthrough_args)  # refused now, not at model load
    except SettingsError as error:
        print(f"nim-serve: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings)
    if (notice := settings.ignored_profile_notice()) is not None:
        log.warning("%s", notice)
    # uvloop, the loop vLLM's own server runs on: bench.server compares the two servers on
    # equal terms, and its transports cost less per chunk written than asyncio's.
    sys.exit(uvloop.run(serve(settings)))


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM drains instead of closing the port.

    While draining, readiness is 503 (the pod leaves the Service), new requests get 503, and
    in-flight ones (streams included) run to completion for up to `shutdown_timeout` seconds.
    Only then does uvicorn shut down. A second signal stops at once.
    """

    def __init__(self, config: uvicorn.Config, admission: Admission, timeout: float) -> None:
        super().__init__(config)
        self._admission = admission
        self._timeout = timeout
        self._drain: asyncio.Future[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is not None or self.should_exit:
            log.warning("second signal %s: stopping without waiting", signal.Signals(sig).name)
            AppStatus.should_exit = True  # end the SSE streams that are still open
            super().handle_exit(sig, frame)
            return
        # Called from a signal handler: hand over to the event loop and wake it.
        loop = asyncio.get_event_loop()
        self._drain = loop.create_future()  # marks the drain as begun
        loop.call_soon_threadsafe(self._begin_drain, sig, frame)

    def _begin_drain(self, sig: int, frame: FrameType | None) -> None:
        self._drain = asyncio.ensure_future(self._drain_then_exit(sig, frame))

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        admission = self._admission
        admission.start_draining()
        log.info(
            "%s: draining %d in-flight sequences (up to %.0f s)",
            signal.Signals(sig).name,
            admission.in_flight,
            self._timeout,
        )
        if await admission.wait_idle(self._timeout):
            log.info("drained; shutting down")
        else:
            log.warning(
                "%d sequences still in flight after %.0f s; closing them",
                admission.in_flight,
                self._timeout,
            )
        AppStatus.should_exit = True
        super().handle_exit(sig, frame)


async def serve(settings: Settings) -> int:
    engine = VllmEngine(settings)
    app = build_app(settings, engine)
    services: Services = app.state.services
    # Streams end when our drain says so, not at the first SIGTERM (sse-starlette's default).
    AppStatus.enable_automatic_graceful_drain = False
    config = uvicorn.Config(
        app,
        host=settings.server_host,
        port=settings.server_port,
        log_config=None,  # keep the handlers configure_logging installed
        access_log=settings.log_level.python_level == "DEBUG",
        timeout_graceful_shutdown=UVICORN_GRACE_SECONDS,
        # Idle keep-alive connections must outlive those of the clients and proxies in front
        # (often 60 s), or a request sent on a connection the server is closing gets a reset.
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    server = DrainingServer(config, services.admission, settings.shutdown_timeout)
    log.info(
        "listening on http://%s:%d (event loop: %s)",
        settings.server_host,
        settings.server_port,
        type(asyncio.get_running_loop()).__module__,
    )

    async def stop_if_engine_fails() -> None:
        if await engine.wait_loaded() is EngineState.FAILED:
            server.should_exit = True

    watcher = asyncio.create_task(stop_if_engine_fails())
    # uvicorn re-raises the stop signal after shutting down, to whatever handler was installed
    # before it. A no-op handler makes a graceful stop exit with status 0, which is what a
    # drained pod should report.
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda *_: None)
    await server.serve()
    watcher.cancel()
    return EXIT_ENGINE_FAILED if engine.state is EngineState.FAILED else 0
