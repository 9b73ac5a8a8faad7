"""Logging for the server, vLLM and uvicorn alike: plain lines, or JSON lines for log pipelines."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from nim_server.settings import Settings

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    # vLLM installs its own handlers unless told not to; one format for every line is easier
    # to read and to parse. Must be set before vllm is imported.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLinesFormatter() if settings.jsonl_logging else logging.Formatter(PLAIN_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.python_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "vllm"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
