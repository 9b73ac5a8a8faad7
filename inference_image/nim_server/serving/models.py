"""GET /v1/models and /v1/models/{id}: the model this server serves and its LoRA adapters."""

from __future__ import annotations

from nim_server.engine import InferenceEngine, ServedModel
from nim_server.errors import model_not_found
from nim_server.protocol import ModelCard, ModelList
from nim_server.serving.common import served_model

OWNER = "nimstack"


class ModelService:
    def __init__(self, engine: InferenceEngine) -> None:
        self._engine = engine

    def card(self) -> ModelCard:
        return _card(served_model(self._engine, None))

    def list(self) -> ModelList:
        base = self.card()
        adapters = sorted(self._engine.adapters.values(), key=lambda model: model.name)
        return ModelList(data=[base, *map(_card, adapters)])

    def get(self, model_id: str) -> ModelCard:
        if not model_id:  # served_model would take "" as the base model
            raise model_not_found(model_id)
        return _card(served_model(self._engine, model_id))


def _card(model: ServedModel) -> ModelCard:
    return ModelCard(
        id=model.name,
        created=model.created,
        owned_by=OWNER,
        root=model.root,
        parent=model.parent,
        max_model_len=model.max_model_len,
    )
