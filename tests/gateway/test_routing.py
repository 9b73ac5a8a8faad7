"""The routing strategies, as pure functions: the ring, bounded load, least load, round robin,
prefix keys."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping

import pytest

from nim_gateway.backends import Endpoint, Lookup
from nim_gateway.proxy import Router
from nim_gateway.routing import (
    HashRing,
    affinity_text,
    bounded_capacity,
    pick_least_load,
    pick_prefix_affinity,
    pick_round_robin,
    stable_hash,
)
from nim_gateway.settings import GatewaySettings, PrefixStart

NODES = [f"http://10.0.0.{i}:8000" for i in range(1, 6)]


class TestHashRing:
    def test_walk_visits_every_node_once(self) -> None:
        ring = HashRing(NODES, virtual_nodes=16)
        for key in range(0, 2**64, 2**60):
            assert sorted(ring.walk(key)) == sorted(NODES)

    def test_the_owner_is_the_same_in_every_process(self) -> None:
        # Built twice from differently ordered lists: placement depends on names only.
        assert list(HashRing(NODES).walk(12345)) == list(HashRing(NODES[::-1]).walk(12345))

    def test_keys_spread_over_the_nodes(self) -> None:
        ring = HashRing(NODES, virtual_nodes=64)
        owners = Counter(next(ring.walk(random.Random(i).getrandbits(64))) for i in range(5000))
        assert set(owners) == set(NODES)
        assert max(owners.values()) < 2 * min(owners.values())

    def test_removing_a_node_moves_only_its_keys(self) -> None:
        before = HashRing(NODES)
        after = HashRing(NODES[:-1])
        keys = [random.Random(i).getrandbits(64) for i in range(2000)]
        moved = [k for k in keys if next(before.walk(k)) != next(after.walk(k))]
        assert all(next(before.walk(k)) == NODES[-1] for k in moved)

    def test_an_empty_ring_yields_nothing(self) -> None:
        assert list(HashRing([]).walk(1)) == []


class TestBoundedLoad:
    def test_capacity_is_c_times_the_average_after_placement(self) -> None:
        assert bounded_capacity(0, 2, 1.25) == 1
        assert bounded_capacity(1, 2, 1.25) == 2
        assert bounded_capacity(2, 2, 1.25) == 2
        assert bounded_capacity(9, 4, 1.25) == 4

    def test_the_same_prefix_goes_to_the_same_node_when_idle(self) -> None:
        ring = HashRing(NODES)
        idle = dict.fromkeys(NODES, 0.0)
        picks = {
            pick_prefix_affinity(ring, "system: you are helpful", idle, 1.25) for _ in "x" * 20
        }
        assert len(picks) == 1

    def test_a_hot_prefix_spills_to_the_next_node_on_the_ring(self) -> None:
        ring = HashRing(NODES)
        loads = dict.fromkeys(NODES, 0.0)
        key = "hot prefix"
        owner, second = list(ring.walk(stable_hash(key)))[:2]
        placed = []
        for _ in range(20):
            node = pick_prefix_affinity(ring, key, loads, 1.25)
            loads[node] += 1
            placed.append(node)
        assert placed[0] == owner
        assert second in placed
        # No node ever holds more than ceil(c * average).
        assert max(loads.values()) <= bounded_capacity(sum(loads.values()) - 1, len(NODES), 1.25)

    def test_only_candidates_are_picked(self) -> None:
        ring = HashRing(NODES)
        for key in map(str, range(50)):
            assert pick_prefix_affinity(ring, key, {NODES[2]: 5.0}, 1.25) == NODES[2]

    def test_no_candidates_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="no candidate"):
            pick_prefix_affinity(HashRing(NODES), "k", {"elsewhere": 0.0}, 1.25)


class TestLeastLoad:
    def test_the_shortest_queue_wins(self) -> None:
        assert pick_least_load({"a": (3.0, 0.1), "b": (1.0, 0.9), "c": (2.0, 0.0)}) == "b"

    def test_kv_usage_breaks_a_tie_in_queue_length(self) -> None:
        assert pick_least_load({"a": (1.0, 0.5), "b": (1.0, 0.2)}) == "b"

    def test_full_ties_are_shared(self) -> None:
        rng = random.Random(7)
        picks = Counter(
            pick_least_load({"a": (0.0, 0.0), "b": (0.0, 0.0)}, rng) for _ in range(200)
        )
        assert picks["a"] > 50
        assert picks["b"] > 50

    def test_kv_usages_within_scrape_noise_are_shared(self) -> None:
        """Two idle replicas whose last scrapes differ by 1 % of KV cache both get requests
        (before, every request of a quiet period went to the one at 0.00)."""
        rng = random.Random(7)
        picks = Counter(
            pick_least_load({"a": (0.0, 0.0), "b": (0.0, 0.01)}, rng) for _ in range(200)
        )
        assert picks["a"] > 50
        assert picks["b"] > 50

    def test_a_clearly_fuller_kv_cache_still_loses_a_tie(self) -> None:
        rng = random.Random(7)
        picks = {pick_least_load({"a": (0.0, 0.0), "b": (0.0, 0.3)}, rng) for _ in range(50)}
        assert picks == {"a"}


class TestRoundRobin:
    def test_turns_visit_every_node_once_before_any_twice(self) -> None:
        picks = [pick_round_robin(["b", "c", "a"], turn) for turn in range(6)]
        assert picks == ["a", "b", "c", "a", "b", "c"]

    def test_the_order_does_not_depend_on_how_candidates_are_listed(self) -> None:
        assert pick_round_robin(["b", "a"], 1) == pick_round_robin(["a", "b"], 1) == "b"

    def test_no_candidates_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="no candidates"):
            pick_round_robin([], 0)

    def test_the_router_alternates_whatever_the_loads_and_prompt(self) -> None:
        router = Router(GatewaySettings(default_routing="round-robin"))
        busy, idle = Endpoint(NODES[0], "svc"), Endpoint(NODES[1], "svc")
        busy.inflight = 9
        lookup = Lookup(known=True, routing=None, candidates=(busy, idle))
        body = {"model": "m", "prompt": "the same prompt every time"}
        picks = [router.choose(lookup, body) for _ in range(4)]
        assert picks == [busy, idle, busy, idle]
        # A replica left out (tried already) is skipped, not waited for.
        assert {router.choose(lookup, body, exclude=[busy]) for _ in range(3)} == {idle}


class TestAffinityText:
    def test_chat_messages_in_order_with_roles(self) -> None:
        body = {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ],
        }
        assert affinity_text(body, 100, after_system_prompt=False) == "m\x00system:Be brief.user:Hi"
        assert (
            affinity_text(body, 100, after_system_prompt=True) == "m\x00system:Be brief.\x00user:Hi"
        )

    def test_only_the_first_n_characters_count(self) -> None:
        shared = "s" * 50
        a = {"model": "m", "prompt": shared + "first question"}
        b = {"model": "m", "prompt": shared + "another question"}
        for after in (False, True):  # a plain prompt has no system prompt to count from
            assert affinity_text(a, 50, after_system_prompt=after) == affinity_text(
                b, 50, after_system_prompt=after
            )
            assert affinity_text(a, 60, after_system_prompt=after) != affinity_text(
                b, 60, after_system_prompt=after
            )

    def test_the_model_is_part_of_the_key(self) -> None:
        for after in (False, True):
            assert affinity_text(
                {"model": "a", "prompt": "x"}, 10, after_system_prompt=after
            ) != affinity_text({"model": "b", "prompt": "x"}, 10, after_system_prompt=after)

    def test_responses_input_and_token_prompts(self) -> None:
        body = {
            "model": "m",
            "instructions": "Be kind.",
            "input": [{"role": "user", "content": "Q"}],
        }
        assert affinity_text(body, 100, after_system_prompt=False) == "m\x00Be kind.user:Q"
        assert affinity_text(body, 100, after_system_prompt=True) == "m\x00Be kind.\x00user:Q"
        tokens = {"model": "m", "prompt": [[1, 2, 3]]}
        assert affinity_text(tokens, 100, after_system_prompt=False).startswith("m\x00")
        assert affinity_text(
            {"model": "m", "prompt": [1, 2, 3]}, 100, after_system_prompt=False
        ) == ("m\x001,2,3")


def conversation(system: str, first_question: str, turn: int) -> dict[str, object]:
    """Turn `turn` of a chat: the system prompt, the history, then the next question."""
    messages = [{"role": "system", "content": system}]
    for t in range(turn):
        messages += [
            {"role": "user", "content": first_question if t == 0 else f"question {t}"},
            {"role": "assistant", "content": f"answer {t}"},
        ]
    messages.append({"role": "user", "content": first_question if turn == 0 else f"q {turn}"})
    return {"model": "m", "messages": messages}


class TestKeyAfterTheSystemPrompt:
    SYSTEM = "You are the support assistant of a shop. " * 40  # 1,680 characters

    def key(self, body: Mapping[str, object], limit: int = 512) -> str:
        return affinity_text(body, limit, after_system_prompt=True)

    def test_conversations_under_one_system_prompt_get_keys_of_their_own(self) -> None:
        first = conversation(self.SYSTEM, "Where is my order 1234?", 0)
        other = conversation(self.SYSTEM, "How do I return a lamp?", 0)
        assert self.key(first) != self.key(other)
        # Counted from the start, 512 characters end inside the system prompt: one key for all.
        assert affinity_text(first, 512, after_system_prompt=False) == affinity_text(
            other, 512, after_system_prompt=False
        )

    @pytest.mark.parametrize("question_chars", [24, 720])
    def test_every_turn_of_a_conversation_has_its_first_turns_key(
        self, question_chars: int
    ) -> None:
        # The key reaches no further than the first question, which every turn resends: not
        # into the first answer, which the first turn's prompt does not have yet.
        question = ("Where is my order 1234? " * 30)[:question_chars]
        keys = {self.key(conversation(self.SYSTEM, question, turn)) for turn in range(4)}
        assert len(keys) == 1

    def test_the_system_prompt_is_part_of_the_key(self) -> None:
        # Another application's requests share no cached prefix, even with the same question.
        a = conversation(self.SYSTEM, "Hi", 0)
        b = conversation("You are a pirate.", "Hi", 0)
        assert self.key(a) != self.key(b)

    def test_only_instructions_the_prompt_begins_with_are_the_system_prompt(self) -> None:
        body = {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Rules."},
                {"role": "system", "content": "More rules."},
                {"role": "user", "content": "Hello"},
                {"role": "system", "content": "A note in the middle."},
            ],
        }
        assert self.key(body, 8) == "m\x00developer:Rules.system:More rules.\x00user:Hel"
        # The key ends with the first message after the system prompt.
        assert self.key(body, 100).endswith("\x00user:Hello")
        responses = {
            "model": "m",
            "instructions": "Be kind.",
            "input": [
                {"role": "developer", "content": [{"type": "input_text", "text": "Tools."}]},
                {"role": "user", "content": "Q"},
            ],
        }
        assert self.key(responses) == "m\x00Be kind.developer:Tools.\x00user:Q"
        assert self.key({"model": "m", "instructions": "I.", "input": "Q"}) == "m\x00I.\x00Q"
        # No system prompt: counted from the start, as without the setting.
        assert self.key({"model": "m", "messages": [{"role": "user", "content": "Q"}]}) == (
            "m\x00\x00user:Q"
        )

    @pytest.mark.parametrize("start", ["after-system-prompt", "start"])
    def test_the_router_spreads_conversations_only_when_keyed_after_it(
        self, start: PrefixStart
    ) -> None:
        settings = GatewaySettings(default_routing="prefix-affinity", prefix_chars_from=start)
        router = Router(settings)
        endpoints = [Endpoint(url, "svc") for url in NODES[:2]]
        lookup = Lookup(known=True, routing=None, candidates=tuple(endpoints))
        chats = [
            conversation(self.SYSTEM, f"Question {i}: where is order {i}?", 0) for i in range(40)
        ]
        picks = Counter(router.choose(lookup, chat) for chat in chats)
        assert len(picks) == (2 if start == "after-system-prompt" else 1)
