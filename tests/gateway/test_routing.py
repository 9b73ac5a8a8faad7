"""The routing strategies, as pure functions: the ring, bounded load, least load, round robin,
prefix keys."""

from __future__ import annotations

import random
from collections import Counter

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
from nim_gateway.settings import GatewaySettings

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
        assert affinity_text(body, 100) == "m\x00system:Be brief.user:Hi"

    def test_only_the_first_n_characters_count(self) -> None:
        shared = "s" * 50
        a = {"model": "m", "prompt": shared + "first question"}
        b = {"model": "m", "prompt": shared + "another question"}
        assert affinity_text(a, 50) == affinity_text(b, 50)
        assert affinity_text(a, 60) != affinity_text(b, 60)

    def test_the_model_is_part_of_the_key(self) -> None:
        assert affinity_text({"model": "a", "prompt": "x"}, 10) != affinity_text(
            {"model": "b", "prompt": "x"}, 10
        )

    def test_responses_input_and_token_prompts(self) -> None:
        body = {
            "model": "m",
            "instructions": "Be kind.",
            "input": [{"role": "user", "content": "Q"}],
        }
        assert affinity_text(body, 100) == "m\x00Be kind.user:Q"
        assert affinity_text({"model": "m", "prompt": [[1, 2, 3]]}, 100).startswith("m\x00")
        assert affinity_text({"model": "m", "prompt": [1, 2, 3]}, 100) == "m\x001,2,3"
