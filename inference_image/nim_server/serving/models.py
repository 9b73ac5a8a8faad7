"""GET /v1/models and /v1/models/{id}: the one model this server serves."""

from __future__ import annotations

from nim_server.engine import InferenceEngine
from nim_server.errors import model_not_found
from nim_server.protocol import ModelCard, ModelList
from nim_server.serving.common import served_model

OWNER = "nimstack"


class ModelService:
    def __init__(self, engine: InferenceEngine) -> None:
        self._engine = engine

    def card(self) -> ModelCard:
        model = served_model(self._engine, None)
        return ModelCard(
            id=model.name,
            created=model.created,
            owned_by=OWNER,
            root=model.root,
            max_model_len=model.max_model_len,
        )

    def list(self) -> ModelList:
        return ModelList(data=[self.card()])

    def get(self, model_id: str) -> ModelCard:
        card = self.card()
        if model_id != card.id:
            raise model_not_found(model_id)
        return card
