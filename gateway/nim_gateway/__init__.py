"""nim-gateway: one OpenAI-compatible endpoint in front of every NIMService's replicas."""

from nim_gateway.app import build_app
from nim_gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "build_app"]
