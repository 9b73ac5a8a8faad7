"""When reconcile_cache reads a finished download Job's pods: only while their termination
messages can still add to the status. The API is a recording stand-in (only `list` is used)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nim_operator.nimcache import _finished_pods

COMPLETE = {
    "metadata": {"uid": "job-uid", "namespace": "ns"},
    "status": {"conditions": [{"type": "Complete", "status": "True"}]},
}


class RecordingKube:
    def __init__(self) -> None:
        self.selectors: list[str | None] = []

    async def list(self, kind: Any, namespace: str, *, label_selector: str | None = None) -> list:
        self.selectors.append(label_selector)
        return []


def reads(previous: dict[str, Any], *, nim_image: bool, job: dict[str, Any] = COMPLETE) -> int:
    kube = RecordingKube()
    asyncio.run(_finished_pods(kube, job, previous, nim_image=nim_image))  # type: ignore[arg-type]
    return len(kube.selectors)


@pytest.mark.parametrize("nim_image", [False, True])
def test_a_finished_job_is_read_until_the_status_is_ready(nim_image: bool) -> None:
    assert reads({"state": "InProgress"}, nim_image=nim_image) == 1


def test_a_ready_nim_serve_cache_is_read_until_it_knows_the_path() -> None:
    assert reads({"state": "Ready", "model": {"name": "org/m"}}, nim_image=False) == 1
    assert reads({"state": "Ready", "model": {"path": "models/org--m"}}, nim_image=False) == 0


def test_a_ready_ngc_cache_is_not_read_again() -> None:
    """NIM's download-to-cache writes no result of ours: Ready is all the pods can say."""
    assert reads({"state": "Ready", "model": {"name": "nvcr.io/nim/x:1"}}, nim_image=True) == 0


def test_a_running_job_is_not_read() -> None:
    assert reads({}, nim_image=True, job={"status": {"active": 1}}) == 0
