"""Events are posted for condition transitions only, one per reason, Warning when it is bad."""

from __future__ import annotations

from typing import Any

from nim_operator.events import EventNote, transition_events


def cond(kind: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


STARTING = [
    cond("Ready", "False", "RolloutPending", "0/1 replicas ready"),
    cond("Progressing", "True", "RolloutInProgress", "0/1 replicas updated, 0 ready"),
    cond("Degraded", "False", "AsExpected"),
    cond("Failed", "False", "AsExpected"),
]
CRASHING = [
    cond("Ready", "False", "CrashLoopBackOff", "0/1 replicas ready: pod x keeps crashing"),
    cond("Progressing", "True", "RolloutInProgress", "0/1 replicas updated, 0 ready"),
    cond("Degraded", "True", "CrashLoopBackOff", "1 of 1 pods: pod x keeps crashing"),
    cond("Failed", "False", "AsExpected"),
]
SERVING = [
    cond("Ready", "True", "ReplicasReady", "1/1 replicas ready"),
    cond("Progressing", "False", "RolloutComplete", "1/1 replicas ready, all up to date"),
    cond("Degraded", "False", "AsExpected"),
    cond("Failed", "False", "AsExpected"),
]


def test_a_new_object_announces_what_it_waits_for_but_not_the_absence_of_failure() -> None:
    assert transition_events([], STARTING) == [
        EventNote("Normal", "RolloutPending", "Ready=False: 0/1 replicas ready"),
        EventNote("Normal", "RolloutInProgress", "Progressing=True: 0/1 replicas updated, 0 ready"),
    ]


def test_nothing_new_means_no_event() -> None:
    assert transition_events(STARTING, STARTING) == []
    assert transition_events(CRASHING, CRASHING) == []


def test_conditions_sharing_a_reason_make_one_warning() -> None:
    assert transition_events(STARTING, CRASHING) == [
        EventNote(
            "Warning",
            "CrashLoopBackOff",
            "Ready=False, Degraded=True: 0/1 replicas ready: pod x keeps crashing",
        )
    ]


def test_recovery_is_normal_news() -> None:
    notes = transition_events(CRASHING, SERVING)
    assert {n.reason: n.type for n in notes} == {
        "ReplicasReady": "Normal",
        "RolloutComplete": "Normal",
        "AsExpected": "Normal",
    }


def test_a_new_reason_with_the_same_status_is_news() -> None:
    gpu = [dict(c) for c in CRASHING]
    gpu[0]["reason"] = gpu[2]["reason"] = "InsufficientGPU"
    notes = transition_events(CRASHING, gpu)
    assert [(n.type, n.reason) for n in notes] == [("Warning", "InsufficientGPU")]


def test_failures_warn() -> None:
    failed = [*STARTING[:3], cond("Failed", "True", "SecretNotFound", 'authSecret "ngc" missing')]
    notes = transition_events(STARTING, failed)
    assert notes == [
        EventNote("Warning", "SecretNotFound", 'Failed=True: authSecret "ngc" missing')
    ]


def test_exposure_waiting_for_its_picker_is_normal_but_a_missing_api_warns() -> None:
    picker = cond("Exposed", "False", "EndpointPickerNotReady", "endpoint picker llm-epp ...")
    missing = cond("Exposed", "False", "GatewayAPIMissing", "install the Gateway API CRDs")
    assert [n.type for n in transition_events(STARTING, [*STARTING, picker])] == ["Normal"]
    assert [n.type for n in transition_events(STARTING, [*STARTING, missing])] == ["Warning"]
