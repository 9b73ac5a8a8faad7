"""Serving layer: request models in, response models or SSE payload streams out; no FastAPI."""

from nim_server.serving.chat import ChatService
from nim_server.serving.completions import CompletionService
from nim_server.serving.models import ModelService
from nim_server.serving.responses import ResponsesService
from nim_server.serving.tokenize import TokenizeService

__all__ = [
    "ChatService",
    "CompletionService",
    "ModelService",
    "ResponsesService",
    "TokenizeService",
]
