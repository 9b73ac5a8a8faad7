"""One choice's output so far, in the form vLLM's streaming parsers take it."""

from __future__ import annotations

from collections.abc import Sequence


class StreamedText:
    """The text and token ids before the latest delta and including it.

    vLLM's tool-call and reasoning parsers read both at every delta. The earlier ids are kept as
    their own list, one delta behind, so a long answer is not copied again for every token.
    """

    def __init__(self) -> None:
        self.previous_text = ""
        self.text = ""
        self.previous_token_ids: list[int] = []
        self.token_ids: list[int] = []
        self._last_delta: Sequence[int] = ()

    def advance(self, delta_text: str, delta_token_ids: Sequence[int]) -> None:
        self.previous_text = self.text
        self.text += delta_text
        self.previous_token_ids.extend(self._last_delta)
        self.token_ids.extend(delta_token_ids)
        self._last_delta = list(delta_token_ids)
