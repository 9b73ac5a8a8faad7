"""The shared-prefix workload: multi-turn chats that all begin with one long system prompt.

Every conversation of a run sends the same system prompt, then its own user turns; each turn
resends the whole history (system prompt, earlier questions and the model's earlier answers), as
a chat client does. Two kinds of prefix are shared: the system prompt by every request, and a
conversation's history by its later turns. A replica's prefix cache can serve the first wherever
the request goes, the second only on the replica that served the conversation's previous turn.

Users pause before each turn (up to `Shape.think_seconds`, the same pauses in every arm): the
turns of different conversations then interleave in no fixed order, as they do in production.
Without them the turns arrive in a fixed rotation, and round robin over 2 replicas would send
every turn of a conversation (of 4, 8, 16) to the same replica by accident.

Each arm of a run gets a "tenant" of its own: a system prompt and questions no other arm sends,
so no arm is served from the prefix cache an earlier arm filled on the same replicas.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

__all__ = ["Conversation", "Shape", "conversations"]

# Common words, so both models' tokenizers see text of ordinary density (~4 characters a token
# for SmolLM2; the tiny model's 384-token vocabulary cuts finer).
_VOCABULARY = (
    "the a an of to in for on with by from at as is are was be been it this that these those "
    "model server request token cache replica gateway prefix prompt answer question user "
    "system cluster node pod service queue load latency throughput memory engine batch "
    "stream client always never often first last next before after while because when where "
    "which should careful helpful brief precise polite safe clear short long fast slow "
    "simple useful exact explain describe summarize compare list check verify measure report "
    "keep send read write policy customer order invoice account billing refund shipping "
    "address product price support"
)
_WORDS = tuple(_VOCABULARY.split())


@dataclass(frozen=True)
class Shape:
    """How much work one arm is: `conversations` chats of `turns` questions each, at most
    `concurrency` requests open at once, `max_tokens` generated per answer."""

    conversations: int
    turns: int
    concurrency: int
    max_tokens: int
    system_chars: int
    question_chars: int
    think_seconds: float


@dataclass(frozen=True)
class Conversation:
    system: str
    questions: tuple[str, ...]
    # Seconds the user waits before each question.
    pauses: tuple[float, ...]

    def request(self, model: str, answers: list[str], max_tokens: int) -> dict[str, Any]:
        """The streamed chat request of turn `len(answers)`: the history so far, one question."""
        turn = len(answers)
        messages = [{"role": "system", "content": self.system}]
        for question, answer in zip(self.questions[:turn], answers, strict=True):
            messages += [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        messages.append({"role": "user", "content": self.questions[turn]})
        return {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            # Random weights (the tiny model) stop anywhere: every answer is exactly max_tokens.
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }


def _text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:chars].strip() + "."


def conversations(shape: Shape, tenant: str, seed: int) -> list[Conversation]:
    """`shape.conversations` chats sharing one system prompt that names `tenant` first."""
    rng = random.Random(f"{seed}/{tenant}")
    # The pauses depend on the seed alone: every arm's users keep the same rhythm.
    pause = random.Random(seed)
    # The tenant comes first, inside the first KV block: no block of it matches another arm's.
    system = f"Tenant {tenant}. You are its assistant. " + _text(rng, shape.system_chars)
    return [
        Conversation(
            system,
            tuple(
                f"Question {i}.{t}: " + _text(rng, shape.question_chars) for t in range(shape.turns)
            ),
            tuple(pause.uniform(0, shape.think_seconds) for _ in range(shape.turns)),
        )
        for i in range(shape.conversations)
    ]
