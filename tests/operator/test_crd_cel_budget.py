"""Both CRDs stay inside a real API server's CEL cost budget, checked by their shape.

A kube-apiserver estimates each CEL rule's cost times the most elements of every list
and map above it, and refuses the whole CRD when one rule (or the sum) is over budget.
An unbounded list counts as "as many elements as fit in a request" (about a million),
so a rule under two unbounded lists is priced far past the budget. The kmock emulator
does no such estimate, which is why this test reads the schema instead: every list and
map above a rule carries maxItems/maxProperties, and the bounds multiplied along any
path to a rule stay small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRDS = ["crds/nimservice.yaml", "crds/nimcache.yaml"]

# The elements a rule may be evaluated for: generous (DRA nests 32 x 32) yet a million
# times below what an unbounded list is priced at.
MOST_EVALUATIONS_PER_RULE = 32 * 32 * 16


def schema_of(path: str) -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / path).read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def rule_multipliers(root: dict[str, Any]) -> list[tuple[str, int | None]]:
    """Each node with CEL rules and the product of the bounds above it (None: unbounded)."""
    found: list[tuple[str, int | None]] = []

    def walk(node: dict[str, Any], where: str, bound: int | None) -> None:
        if node.get("x-kubernetes-validations"):
            found.append((where, bound))
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]", times(bound, node.get("maxItems")))
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, f"{where}{{}}", times(bound, node.get("maxProperties")))
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{where}.{name}", bound)

    walk(root, "", 1)
    return found


def times(bound: int | None, most: int | None) -> int | None:
    return None if bound is None or most is None else bound * most


@pytest.mark.parametrize("path", CRDS)
def test_every_list_and_map_above_a_rule_is_bounded(path: str) -> None:
    unbounded = [where for where, bound in rule_multipliers(schema_of(path)) if bound is None]
    assert unbounded == [], f"add maxItems/maxProperties above these rules: {unbounded}"


@pytest.mark.parametrize("path", CRDS)
def test_no_rule_is_evaluated_for_too_many_elements(path: str) -> None:
    heavy = [
        (where, bound)
        for where, bound in rule_multipliers(schema_of(path))
        if bound is not None and bound > MOST_EVALUATIONS_PER_RULE
    ]
    assert heavy == []


def test_the_walk_finds_a_rule_under_an_unbounded_list() -> None:
    """The check itself: a rule under a list without maxItems is reported."""
    schema = {
        "type": "object",
        "properties": {
            "a": {
                "type": "array",
                "items": {"type": "object", "x-kubernetes-validations": [{"rule": "true"}]},
            },
            "b": {
                "type": "array",
                "maxItems": 4,
                "items": {"type": "object", "x-kubernetes-validations": [{"rule": "true"}]},
            },
        },
    }
    assert rule_multipliers(schema) == [(".a[]", None), (".b[]", 4)]
