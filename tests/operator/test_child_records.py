"""The records that let a timer tick skip an apply (nim_operator.child_records): pure parts."""

from __future__ import annotations

from typing import Any

from nim_operator.child_records import controller_uid, manifest_digest, record, still_live


def deployment(version: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "llm",
            "resourceVersion": version,
            "generation": 3,
            "ownerReferences": [{"uid": "u-1", "controller": True}],
            "managedFields": [{"manager": "nimstack-operator"}],
        },
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "nim"}]}}},
        "status": {"readyReplicas": 2},
    }


def test_the_digest_ignores_key_order_and_sees_any_value() -> None:
    assert manifest_digest({"a": 1, "b": {"c": 2}}) == manifest_digest({"b": {"c": 2}, "a": 1})
    assert manifest_digest({"a": 1}) != manifest_digest({"a": 2})


def test_a_deployment_record_keeps_what_the_status_needs_and_not_the_template() -> None:
    child = record("deployments", "d1", deployment("7"))
    assert child is not None
    assert child.resource_version == "7"
    assert child.body == {
        "metadata": {
            "name": "llm",
            "resourceVersion": "7",
            "generation": 3,
            "ownerReferences": [{"uid": "u-1", "controller": True}],
        },
        "spec": {"replicas": 2},
        "status": {"readyReplicas": 2},
    }


def test_no_record_for_kinds_no_watch_reports_on() -> None:
    assert record("horizontalpodautoscalers", "d1", deployment("7")) is None
    assert record("services", "d1", {"metadata": {}}) is None  # no version to compare with


def test_only_the_echo_of_our_apply_keeps_a_record_live() -> None:
    child = record("services", "d1", {"metadata": {"resourceVersion": "7"}})
    assert child is not None
    assert still_live(child, "MODIFIED", {"metadata": {"resourceVersion": "7"}})
    assert not still_live(child, "MODIFIED", {"metadata": {"resourceVersion": "8"}})
    assert not still_live(child, "DELETED", {"metadata": {"resourceVersion": "7"}})


def test_the_controller_is_the_owner_reference_marked_so() -> None:
    assert controller_uid(deployment("1")) == "u-1"
    assert controller_uid({"metadata": {"ownerReferences": [{"uid": "x"}]}}) is None
