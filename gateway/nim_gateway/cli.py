"""`nim-gateway`: the command line. Flags override NIM_GATEWAY_* variables."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import uvicorn

from nim_gateway.app import build_app
from nim_gateway.settings import GatewaySettings, RoutingName

__all__ = ["main"]


def parse_args(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="nim-gateway",
        description="One OpenAI-compatible endpoint for every NIMService (docs/gateway.md).",
    )
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument(
        "--backends-file", type=Path, help="static backends (YAML): no Kubernetes needed"
    )
    parser.add_argument(
        "--backend",
        action="append",
        dest="backends",
        metavar="[NAME=]URL",
        help="a static replica; repeat, same NAME = replicas of one service",
    )
    parser.add_argument("--namespaces", help="comma-separated; empty: every namespace")
    parser.add_argument("--api-keys-file", type=Path)
    parser.add_argument("--default-routing", choices=get_args(RoutingName))
    parser.add_argument("--scrape-interval", type=float)
    parser.add_argument("--log-level")
    args = parser.parse_args(argv)
    return {key: value for key, value in vars(args).items() if value is not None}


def main(argv: Sequence[str] | None = None) -> None:
    settings = GatewaySettings(**parse_args(argv))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # Streams pass through unbuffered; uvicorn's access log is enough for the rest.
        timeout_graceful_shutdown=30,
    )
