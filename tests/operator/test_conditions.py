"""Status computation from the Deployment and Pod bodies a real cluster reports.

The dicts below follow what `kubectl get -o yaml` shows in each situation (scheduler messages,
kubelet waiting reasons, Deployment conditions), trimmed to the fields that matter.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from nim_operator.conditions import (
    OWNED_STATUS_FIELDS,
    Observation,
    Problem,
    compute_status,
    diagnose_pods,
    label_selector,
    rollout_problem,
)
from nim_operator.models import MultiNodeSpec, NIMServiceSpec, NIMServiceStatus
from nim_operator.render import Owner

OWNER = Owner(name="llama", namespace="models", uid="0b7c5a4e-8e47-4bb4-9a43-2f2f4f1d2c11")
SPEC = NIMServiceSpec.from_body({"image": {"repository": "nvcr.io/nim/meta/llama", "tag": "1.8"}})
NOW = "2026-11-21T12:00:00Z"
EARLIER = "2026-11-21T11:00:00Z"
CRD = Path(__file__).resolve().parents[2] / "crds" / "nimservice.yaml"


def pod(name: str = "llama-6d9f7b8c5-x2x7k", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "models"}, "status": status}


def container(**fields: Any) -> dict[str, Any]:
    return {"name": "nim", "ready": False, "restartCount": 0, **fields}


GPU_PENDING = pod(
    phase="Pending",
    conditions=[
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: "
            "0/3 nodes are available: 3 No preemption victims found for incoming pod.",
        }
    ],
)
SELECTOR_PENDING = pod(
    phase="Pending",
    conditions=[
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node "
            "affinity/selector.",
        }
    ],
)
IMAGE_BACKOFF = pod(
    phase="Pending",
    containerStatuses=[
        container(
            state={
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": 'Back-off pulling image "nvcr.io/nim/meta/llama:1.8"',
                }
            }
        )
    ],
)
ERR_IMAGE_PULL = pod(
    phase="Pending",
    containerStatuses=[
        container(
            state={
                "waiting": {
                    "reason": "ErrImagePull",
                    "message": "rpc error: code = NotFound desc = failed to pull and unpack image",
                }
            }
        )
    ],
)
CRASH_LOOP = pod(
    phase="Running",
    containerStatuses=[
        container(
            restartCount=5,
            state={
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": "back-off 2m40s restarting failed container=nim",
                }
            },
            lastState={"terminated": {"exitCode": 1, "reason": "Error"}},
        )
    ],
)
OOM_LOOP = pod(
    phase="Running",
    containerStatuses=[
        container(
            restartCount=2,
            state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
            lastState={"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
        )
    ],
)
OOM_NOW = pod(
    phase="Running",
    containerStatuses=[
        container(restartCount=1, state={"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    ],
)
MISSING_SECRET = pod(
    phase="Pending",
    containerStatuses=[
        container(
            state={
                "waiting": {
                    "reason": "CreateContainerConfigError",
                    "message": 'secret "ngc-api" not found',
                }
            }
        )
    ],
)
LOADING = pod(
    phase="Running",
    conditions=[{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
    containerStatuses=[container(started=True, state={"running": {"startedAt": EARLIER}})],
)
SERVING = pod(
    phase="Running",
    conditions=[{"type": "Ready", "status": "True"}],
    containerStatuses=[container(ready=True, state={"running": {"startedAt": EARLIER}})],
)


def deployment(
    *,
    replicas: int = 1,
    current: int | None = None,
    updated: int | None = None,
    ready: int = 0,
    generation: int = 1,
    observed: int | None = None,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    current = replicas if current is None else current
    status: dict[str, Any] = {
        "observedGeneration": generation if observed is None else observed,
        "replicas": current,
        "updatedReplicas": current if updated is None else updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "conditions": conditions or [],
    }
    return {
        "metadata": {"name": "llama", "namespace": "models", "generation": generation},
        "spec": {"replicas": replicas, "progressDeadlineSeconds": 2100},
        "status": status,
    }


def observe(**kwargs: Any) -> Observation:
    kwargs.setdefault("spec", SPEC)
    return Observation(owner=OWNER, generation=kwargs.pop("generation", 1), **kwargs)


def conditions_of(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def brief(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {t: (c["status"], c["reason"]) for t, c in conditions_of(status).items()}


class TestDiagnosePods:
    def test_healthy_and_starting_pods_are_no_problem(self) -> None:
        assert diagnose_pods([SERVING, LOADING]) is None
        assert diagnose_pods([]) is None

    def test_a_pod_waiting_for_gpus_names_the_resource(self) -> None:
        problem = diagnose_pods([GPU_PENDING])
        assert problem is not None
        assert problem.reason == "InsufficientGPU"
        assert "3 Insufficient nvidia.com/gpu" in problem.message
        assert problem.message.startswith("1 of 1 pods: pod llama-6d9f7b8c5-x2x7k")

    def test_other_scheduling_failures_are_unschedulable(self) -> None:
        problem = diagnose_pods([SELECTOR_PENDING])
        assert problem == Problem(
            "Unschedulable",
            "1 of 1 pods: pod llama-6d9f7b8c5-x2x7k cannot be scheduled: 0/3 nodes are "
            "available: 3 node(s) didn't match Pod's node affinity/selector.",
        )

    @pytest.mark.parametrize("failing", [IMAGE_BACKOFF, ERR_IMAGE_PULL])
    def test_both_image_pull_reasons_are_one_reason(self, failing: dict[str, Any]) -> None:
        problem = diagnose_pods([failing])
        assert problem is not None
        assert problem.reason == "ImagePullBackOff"
        waiting = failing["status"]["containerStatuses"][0]["state"]["waiting"]
        assert waiting["message"] in problem.message

    def test_a_crash_loop_reports_the_exit_code_and_restarts(self) -> None:
        problem = diagnose_pods([CRASH_LOOP])
        assert problem is not None
        assert problem.reason == "CrashLoopBackOff"
        assert "last exit code 1 (Error)" in problem.message
        assert "restarted 5 times" in problem.message

    @pytest.mark.parametrize("killed", [OOM_LOOP, OOM_NOW])
    def test_out_of_memory_is_named_as_such(self, killed: dict[str, Any]) -> None:
        problem = diagnose_pods([killed])
        assert problem is not None
        assert problem.reason == "OOMKilled"
        assert "resources.limits.memory" in problem.message

    def test_a_missing_secret_reference_is_a_config_error(self) -> None:
        problem = diagnose_pods([MISSING_SECRET])
        assert problem is not None
        assert problem.reason == "CreateContainerConfigError"
        assert 'secret "ngc-api" not found' in problem.message

    def test_init_containers_count_too(self) -> None:
        init_failing = pod(
            phase="Pending",
            initContainerStatuses=[
                container(
                    name="fetch-model",
                    restartCount=3,
                    state={"waiting": {"reason": "CrashLoopBackOff"}},
                    lastState={"terminated": {"exitCode": 2, "reason": "Error"}},
                )
            ],
        )
        problem = diagnose_pods([init_failing])
        assert problem is not None
        assert problem.reason == "CrashLoopBackOff"

    def test_the_worst_problem_wins_and_is_counted(self) -> None:
        pods = [
            pod("a", **CRASH_LOOP["status"]),
            pod("b", **IMAGE_BACKOFF["status"]),
            pod("c", **CRASH_LOOP["status"]),
            pod("d", **SERVING["status"]),
        ]
        problem = diagnose_pods(pods)
        assert problem is not None
        assert problem.reason == "ImagePullBackOff"
        assert problem.message.startswith("1 of 4 pods: pod b")

    def test_terminating_pods_are_ignored(self) -> None:
        old = copy.deepcopy(CRASH_LOOP)
        old["metadata"]["deletionTimestamp"] = EARLIER
        assert diagnose_pods([old, SERVING]) is None

    def test_an_evicted_pod_failed(self) -> None:
        evicted = pod(
            phase="Failed",
            reason="Evicted",
            message="The node was low on resource: ephemeral-storage.",
        )
        problem = diagnose_pods([evicted])
        assert problem is not None
        assert problem.reason == "PodFailed"
        assert "ephemeral-storage" in problem.message


class TestRolloutProblem:
    def test_deadline_exceeded(self) -> None:
        stuck = deployment(
            conditions=[
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": 'ReplicaSet "llama-6d9f7b8c5" has timed out progressing.',
                }
            ]
        )
        problem = rollout_problem(stuck)
        assert problem is not None
        assert problem.reason == "ProgressDeadlineExceeded"
        assert "(2100s)" in problem.message
        assert "has timed out progressing" in problem.message

    def test_pods_that_cannot_be_created(self) -> None:
        quota = deployment(
            conditions=[
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "llama-6d9f7b8c5-abcde" is forbidden: exceeded quota: gpu',
                }
            ]
        )
        problem = rollout_problem(quota)
        assert problem is not None
        assert problem.reason == "ReplicaFailure"
        assert "exceeded quota" in problem.message

    def test_a_progressing_deployment_has_none(self) -> None:
        fine = deployment(
            conditions=[
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
            ]
        )
        assert rollout_problem(fine) is None


class TestComputeStatus:
    def test_a_serving_deployment_is_ready(self) -> None:
        status = compute_status(
            observe(deployment=deployment(ready=1), pods=[SERVING]), None, now=NOW
        )
        assert brief(status) == {
            "Ready": ("True", "ReplicasReady"),
            "Progressing": ("False", "RolloutComplete"),
            "Degraded": ("False", "AsExpected"),
            "Failed": ("False", "AsExpected"),
        }
        assert status["state"] == "Ready"
        assert (status["replicas"], status["readyReplicas"], status["availableReplicas"]) == (
            1,
            1,
            1,
        )
        assert status["observedGeneration"] == 1
        assert (
            status["selector"]
            == "app.kubernetes.io/instance=llama,app.kubernetes.io/name=nim-service"
        )
        assert status["endpoint"] == "http://llama.models.svc.cluster.local:8000"
        assert status["model"] == {
            "name": "llama",
            "clusterEndpoint": "http://llama.models.svc.cluster.local:8000",
        }
        assert conditions_of(status)["Ready"]["message"] == "1/1 replicas ready"

    def test_before_the_workload_exists_the_reason_names_it(self) -> None:
        single = compute_status(observe(deployment=None, pods=[]), None, now=NOW)
        assert brief(single)["Ready"] == ("False", "DeploymentMissing")
        multi_node = SPEC.model_copy(
            update={"multi_node": MultiNodeSpec.model_validate({"parallelism": {"pipeline": 2}})}
        )
        multi = compute_status(observe(spec=multi_node, deployment=None, pods=[]), None, now=NOW)
        assert brief(multi)["Ready"] == ("False", "LeaderWorkerSetNotCreated")
        assert conditions_of(multi)["Ready"]["message"] == "the LeaderWorkerSet does not exist yet"
        assert brief(multi)["Failed"] == ("False", "AsExpected")
        assert multi["state"] == "Pending"

    def test_waiting_for_gpus_is_pending_and_degraded(self) -> None:
        status = compute_status(observe(deployment=deployment(), pods=[GPU_PENDING]), None, now=NOW)
        assert brief(status) == {
            "Ready": ("False", "InsufficientGPU"),
            "Progressing": ("True", "RolloutInProgress"),
            "Degraded": ("True", "InsufficientGPU"),
            "Failed": ("False", "AsExpected"),
        }
        assert status["state"] == "Pending"
        assert "Insufficient nvidia.com/gpu" in conditions_of(status)["Ready"]["message"]
        assert conditions_of(status)["Ready"]["message"].startswith("0/1 replicas ready: ")

    def test_a_crash_loop_is_not_ready(self) -> None:
        status = compute_status(observe(deployment=deployment(), pods=[CRASH_LOOP]), None, now=NOW)
        assert brief(status)["Ready"] == ("False", "CrashLoopBackOff")
        assert brief(status)["Degraded"] == ("True", "CrashLoopBackOff")
        assert status["state"] == "NotReady"

    def test_a_loading_model_is_starting_not_degraded(self) -> None:
        status = compute_status(observe(deployment=deployment(), pods=[LOADING]), None, now=NOW)
        assert brief(status)["Ready"] == ("False", "Starting")
        assert brief(status)["Degraded"] == ("False", "AsExpected")
        assert status["state"] == "Pending"
        assert "/v1/health/ready" in conditions_of(status)["Ready"]["message"]

    def test_a_deployment_the_controller_has_not_seen_yet(self) -> None:
        fresh = {"metadata": {"generation": 1}, "spec": {"replicas": 1}}
        status = compute_status(observe(deployment=fresh), None, now=NOW)
        assert brief(status)["Ready"] == ("False", "RolloutPending")
        assert brief(status)["Progressing"] == ("True", "RolloutInProgress")

    def test_an_exceeded_deadline_fails_with_the_pod_cause(self) -> None:
        stuck = deployment(
            conditions=[
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": 'ReplicaSet "llama-6d9f7b8c5" has timed out progressing.',
                }
            ]
        )
        status = compute_status(observe(deployment=stuck, pods=[IMAGE_BACKOFF]), None, now=NOW)
        assert brief(status) == {
            "Ready": ("False", "ImagePullBackOff"),
            "Progressing": ("False", "ProgressDeadlineExceeded"),
            "Degraded": ("True", "ImagePullBackOff"),
            "Failed": ("True", "ProgressDeadlineExceeded"),
        }
        assert status["state"] == "Failed"
        assert "Back-off pulling image" in conditions_of(status)["Failed"]["message"]

    def test_a_missing_secret_fails_before_any_deployment(self) -> None:
        missing = Problem("SecretNotFound", 'authSecret "ngc" not found in namespace models')
        status = compute_status(observe(config_problem=missing), None, now=NOW)
        assert brief(status) == {
            "Ready": ("False", "SecretNotFound"),
            "Progressing": ("False", "SecretNotFound"),
            "Degraded": ("False", "AsExpected"),
            "Failed": ("True", "SecretNotFound"),
        }
        assert status["state"] == "Failed"
        assert status["replicas"] == 0
        assert conditions_of(status)["Failed"]["message"] == missing.message

    def test_a_missing_secret_with_pods_still_serving_is_ready_and_failed(self) -> None:
        missing = Problem("SecretNotFound", 'authSecret "ngc" not found in namespace models')
        status = compute_status(
            observe(config_problem=missing, deployment=deployment(ready=1), pods=[SERVING]),
            None,
            now=NOW,
        )
        assert brief(status)["Ready"] == ("True", "ReplicasReady")
        assert brief(status)["Failed"] == ("True", "SecretNotFound")
        assert status["state"] == "Failed"

    def test_an_invalid_spec_has_no_endpoint(self) -> None:
        invalid = Problem("InvalidSpec", "spec.image: Field required")
        status = compute_status(observe(spec=None, config_problem=invalid), None, now=NOW)
        assert brief(status)["Failed"] == ("True", "InvalidSpec")
        assert "endpoint" not in status
        assert "model" not in status
        assert status["selector"] == label_selector("llama")

    def test_scaled_to_zero(self) -> None:
        status = compute_status(observe(deployment=deployment(replicas=0)), None, now=NOW)
        assert brief(status)["Ready"] == ("False", "ScaledToZero")
        assert brief(status)["Progressing"] == ("False", "ScaledToZero")
        assert status["state"] == "NotReady"

    def test_a_rolling_update_keeps_serving(self) -> None:
        rolling = deployment(replicas=1, current=2, updated=1, ready=1, generation=2, observed=2)
        status = compute_status(observe(deployment=rolling, pods=[SERVING, LOADING]), None, now=NOW)
        assert brief(status)["Ready"] == ("True", "ReplicasReady")
        assert brief(status)["Progressing"] == ("True", "ScalingDown")

    def test_scaling_up_under_an_hpa(self) -> None:
        scaling = deployment(replicas=3, current=3, updated=3, ready=2)
        status = compute_status(observe(deployment=scaling, pods=[SERVING] * 2), None, now=NOW)
        assert brief(status)["Ready"] == ("True", "ReplicasReady")
        assert conditions_of(status)["Ready"]["message"] == "2/3 replicas ready"
        assert brief(status)["Progressing"] == ("True", "RolloutInProgress")

    def test_a_missing_servicemonitor_crd_is_a_degradation_only(self) -> None:
        status = compute_status(
            observe(deployment=deployment(ready=1), pods=[SERVING], service_monitor_missing=True),
            None,
            now=NOW,
        )
        assert brief(status)["Degraded"] == ("True", "ServiceMonitorCRDMissing")
        assert brief(status)["Ready"] == ("True", "ReplicasReady")
        assert "monitoring.coreos.com/v1" in conditions_of(status)["Degraded"]["message"]

    def test_every_condition_carries_the_generation(self) -> None:
        status = compute_status(observe(deployment=deployment(), generation=7), None, now=NOW)
        assert status["observedGeneration"] == 7
        assert {c["observedGeneration"] for c in status["conditions"]} == {7}

    def test_transition_time_moves_only_when_the_status_changes(self) -> None:
        before = compute_status(
            observe(deployment=deployment(), pods=[GPU_PENDING]), None, now=EARLIER
        )
        # Same statuses, another reason (GPU wait -> crash loop): times stay.
        after = compute_status(observe(deployment=deployment(), pods=[CRASH_LOOP]), before, now=NOW)
        assert {c["lastTransitionTime"] for c in after["conditions"]} == {EARLIER}
        # Ready flips to True and Degraded to False: only those two move.
        serving = compute_status(
            observe(deployment=deployment(ready=1), pods=[SERVING]), after, now=NOW
        )
        times = {c["type"]: c["lastTransitionTime"] for c in serving["conditions"]}
        assert times == {"Ready": NOW, "Progressing": NOW, "Degraded": NOW, "Failed": EARLIER}

    def test_the_same_inputs_give_the_same_status(self) -> None:
        obs = observe(deployment=deployment(), pods=[CRASH_LOOP])
        first = compute_status(obs, None, now=EARLIER)
        assert compute_status(obs, first, now=NOW) == first

    def test_long_messages_are_clipped(self) -> None:
        chatty = copy.deepcopy(CRASH_LOOP)
        terminated = chatty["status"]["containerStatuses"][0]["lastState"]["terminated"]
        terminated["message"] = "x" * 5000
        status = compute_status(observe(deployment=deployment(), pods=[chatty]), None, now=NOW)
        assert all(len(c["message"]) <= 1024 for c in status["conditions"])


def test_the_status_is_a_valid_status_model() -> None:
    status = compute_status(observe(deployment=deployment(ready=1), pods=[SERVING]), None, now=NOW)
    assert NIMServiceStatus.model_validate(status).to_k8s() == status


def test_every_status_field_is_declared_in_the_crd() -> None:
    """The API server prunes undeclared status fields: each one written must be in the schema."""
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    declared = schema["properties"]
    condition_fields = declared["conditions"]["items"]["properties"]
    for obs in (
        observe(deployment=deployment(ready=1), pods=[SERVING]),
        observe(spec=None, config_problem=Problem("InvalidSpec", "spec: bad")),
    ):
        status = compute_status(obs, None, now=NOW)
        assert set(status) <= set(declared)
        assert set(status) <= set(OWNED_STATUS_FIELDS)
        for item in status["conditions"]:
            assert set(item) <= set(condition_fields)
        if "model" in status:
            assert set(status["model"]) <= set(declared["model"]["properties"])
