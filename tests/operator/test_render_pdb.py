"""render_pdb: drains take one pod at a time when there can be several."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_pdb, selector_labels

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")


def make_spec(**fields: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate({"image": {"repository": "nim", "tag": "1"}, **fields})


class TestRenderPDB:
    def test_multi_node_groups_one_pod_of_all_groups_at_a_time(self) -> None:
        """Every pod of every group, leaders and workers: a worker's eviction costs its group."""
        spec = make_spec(replicas=2, multiNode={"parallelism": {"pipeline": 4}})
        pdb = render_pdb(OWNER, spec, replicas=2)
        assert pdb is not None
        assert pdb["spec"] == {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels("llama")},
        }
        assert "nim-llm-role" not in pdb["spec"]["selector"]["matchLabels"]

    def test_absent_for_a_single_multi_node_group(self) -> None:
        spec = make_spec(replicas=1, multiNode={"parallelism": {"pipeline": 4}})
        assert render_pdb(OWNER, spec, replicas=1) is None

    @pytest.mark.parametrize("replicas", [0, 1])
    def test_absent_for_a_single_pod(self, replicas: int) -> None:
        assert render_pdb(OWNER, make_spec(replicas=replicas), replicas=replicas) is None

    def test_absent_when_the_hpa_cannot_go_above_one(self) -> None:
        spec = make_spec(scale={"enabled": True, "hpa": {"maxReplicas": 1}})
        assert render_pdb(OWNER, spec, replicas=None) is None

    @pytest.mark.parametrize(
        ("fields", "replicas"),
        [
            ({"replicas": 3}, 3),
            ({"scale": {"enabled": True, "hpa": {"minReplicas": 1, "maxReplicas": 4}}}, None),
            ({"scale": {"enabled": True, "hpa": {"minReplicas": 2, "maxReplicas": 4}}}, None),
        ],
    )
    def test_one_pod_at_a_time(self, fields: dict[str, Any], replicas: int | None) -> None:
        pdb = render_pdb(OWNER, make_spec(**fields), replicas=replicas)
        assert pdb is not None
        assert pdb["spec"] == {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels("llama")},
        }
        kubernetes_validate.validate(pdb, "1.31", strict=True)
