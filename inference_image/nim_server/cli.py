"""`nim-serve`: start the HTTP server at once and load the model behind it."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvicorn

from nim_server.app import build_app
from nim_server.engine import EngineState, VllmEngine
from nim_server.log_setup import configure_logging
from nim_server.settings import Settings, SettingsError, load_settings

log = logging.getLogger("nim_server")

# Exit code when the model could not be loaded: the kubelet restarts the container and
# `kubectl describe pod` shows the failure.
EXIT_ENGINE_FAILED = 3


def main(argv: list[str] | None = None) -> None:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as error:
        print(f"nim-serve: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings)
    sys.exit(asyncio.run(serve(settings)))


async def serve(settings: Settings) -> int:
    engine = VllmEngine(settings)
    app = build_app(settings, engine)
    config = uvicorn.Config(
        app,
        host=settings.server_host,
        port=settings.server_port,
        log_config=None,  # keep the handlers configure_logging installed
        access_log=settings.log_level == "DEBUG",
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    log.info("listening on http://%s:%d", settings.server_host, settings.server_port)

    async def stop_if_engine_fails() -> None:
        if await engine.wait_loaded() is EngineState.FAILED:
            server.should_exit = True

    watcher = asyncio.create_task(stop_if_engine_fails())
    # uvicorn turns SIGTERM/SIGINT into a graceful shutdown and then re-raises the signal to
    # whatever handler was installed before it. A no-op handler here makes a graceful stop
    # exit with status 0, which is what a pod being drained should report.
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda *_: None)
    await server.serve()
    watcher.cancel()
    return EXIT_ENGINE_FAILED if engine.state is EngineState.FAILED else 0
