"""POST /tokenize and /detokenize, as vLLM's server has them: the model's own tokenizer."""

from __future__ import annotations

from nim_server.engine import InferenceEngine
from nim_server.errors import invalid_request
from nim_server.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from nim_server.serving.common import check_message_content, served_model


class TokenizeService:
    def __init__(self, engine: InferenceEngine) -> None:
        self._engine = engine

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        model = served_model(self._engine, request.model)
        if request.messages is not None:
            messages = [m.model_dump(exclude_none=True) for m in request.messages]
            check_message_content(messages)
            rendered = await self._engine.render_chat(
                messages, add_generation_prompt=request.add_generation_prompt, template_kwargs={}
            )
            tokens = rendered.token_ids
        else:
            assert request.prompt is not None  # the protocol model guarantees one of the two
            encoded = self._engine.tokenizer().encode(
                request.prompt, add_special_tokens=request.add_special_tokens
            )
            tokens = [int(token) for token in encoded]
        return TokenizeResponse(
            count=len(tokens),
            max_model_len=model.max_model_len,
            tokens=tokens,
            token_strs=self._engine.token_strings(tokens) if request.return_token_strs else None,
        )

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        model = served_model(self._engine, request.model)
        outside = [token for token in request.tokens if token >= model.vocab_size]
        if outside:
            raise invalid_request(
                f"token ids {outside[:5]} are outside the vocabulary (0..{model.vocab_size - 1})",
                param="tokens",
            )
        return DetokenizeResponse(prompt=self._engine.decode(request.tokens))
