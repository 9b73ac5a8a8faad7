"""render_leader_worker_set and spec.multiNode's place among the children: pure, no cluster.

The LeaderWorkerSet is not a built-in kind, so kubernetes_validate cannot check it whole; each
of its pod templates is checked as a Pod against Kubernetes' own schema instead, and the
LeaderWorkerSet's own fields against what the LWS API (leaderworkerset.x-k8s.io/v1) defines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_children, render_leader_worker_set, render_service
from nim_operator.render.labels import ROLE_LABEL, selector_labels
from tests.support.pod_security import restricted_violations

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")
KUBERNETES_VERSION = "1.31"
SAMPLE = Path(__file__).parents[2] / "manifests" / "samples" / "llama-3.1-405b-multinode.yaml"
NVIDIA_IMAGE = {"repository": "nvcr.io/nim/meta/llama-3.1-405b-instruct", "tag": "1.3.0"}
OUR_IMAGE = {"repository": "nimstack/nim-server", "tag": "0.1.0"}
# The LeaderWorkerSet spec's fields (LeaderWorkerSetSpec, LeaderWorkerTemplate) in LWS v1.
LWS_SPEC_FIELDS = {
    "replicas",
    "leaderWorkerTemplate",
    "rolloutStrategy",
    "startupPolicy",
    "networkConfig",
}
LWS_TEMPLATE_FIELDS = {
    "leaderTemplate",
    "workerTemplate",
    "size",
    "restartPolicy",
    "subGroupPolicy",
    "resizePolicy",
}


def make_spec(image: dict[str, str] = OUR_IMAGE, **fields: Any) -> NIMServiceSpec:
    body = {"image": image, "multiNode": {"parallelism": {"tensor": 8, "pipeline": 2}}}
    return NIMServiceSpec.model_validate({**body, **fields})


def render(spec: NIMServiceSpec, replicas: int | None = 1) -> dict[str, Any]:
    lws = render_leader_worker_set(OWNER, spec, replicas=replicas)
    assert lws is not None
    return lws


def templates(lws: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    group = lws["spec"]["leaderWorkerTemplate"]
    return group["leaderTemplate"], group["workerTemplate"]


def server(template: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in template["spec"]["containers"] if c["name"] == "nim"]
    return dict(container)


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container["env"]}


def value(container: dict[str, Any], name: str) -> str:
    return str(env(container)[name]["value"])


def field_path(container: dict[str, Any], name: str) -> str:
    return str(env(container)[name]["valueFrom"]["fieldRef"]["fieldPath"])


class TestRenderLeaderWorkerSet:
    def test_absent_without_multi_node(self) -> None:
        spec = NIMServiceSpec.model_validate({"image": OUR_IMAGE})
        assert render_leader_worker_set(OWNER, spec, replicas=1) is None

    def test_identity_group_shape_and_policies(self) -> None:
        lws = render(make_spec(replicas=3), replicas=3)
        assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
        assert lws["kind"] == "LeaderWorkerSet"
        assert lws["metadata"]["name"] == "llama"
        assert lws["metadata"]["namespace"] == "models"
        (ref,) = lws["metadata"]["ownerReferences"]
        assert ref["uid"] == OWNER.uid
        assert ref["controller"] is True
        assert set(lws["spec"]) <= LWS_SPEC_FIELDS
        assert set(lws["spec"]["leaderWorkerTemplate"]) <= LWS_TEMPLATE_FIELDS
        assert lws["spec"]["replicas"] == 3  # groups, each one server
        group = lws["spec"]["leaderWorkerTemplate"]
        assert group["size"] == 2  # pipeline parallelism: pods per group, the leader included
        assert group["restartPolicy"] == "RecreateGroupOnPodRestart"
        assert lws["spec"]["startupPolicy"] == "LeaderCreated"
        rolling = lws["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]
        assert rolling == {"maxSurge": 1, "maxUnavailable": 0}

    def test_tensor_parallelism_is_each_pods_gpu_count(self) -> None:
        for template in templates(render(make_spec())):
            assert server(template)["resources"]["limits"]["nvidia.com/gpu"] == 8
            assert value(server(template), "NIM_TENSOR_PARALLEL_SIZE") == "8"
            assert value(server(template), "NIM_PIPELINE_PARALLEL_SIZE") == "2"

    def test_unset_sizes_are_one(self) -> None:
        spec = NIMServiceSpec.model_validate({"image": OUR_IMAGE, "multiNode": {"parallelism": {}}})
        lws = render(spec)
        assert lws["spec"]["leaderWorkerTemplate"]["size"] == 1
        leader, _ = templates(lws)
        assert server(leader)["resources"]["limits"]["nvidia.com/gpu"] == 1

    def test_roles_are_labelled_and_only_the_leader_serves(self) -> None:
        leader, worker = templates(render(make_spec(labels={"team": "a"})))
        for template, role in ((leader, "leader"), (worker, "worker")):
            labels = template["metadata"]["labels"]
            assert labels[ROLE_LABEL] == role
            assert labels["team"] == "a"
            assert selector_labels("llama").items() <= labels.items()
        assert server(leader)["ports"][0]["name"] == "api"
        assert "readinessProbe" in server(leader)
        assert "startupProbe" in server(leader)
        for absent in ("ports", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle"):
            assert absent not in server(worker)

    def test_nvidia_images_get_nvidias_multi_node_environment(self) -> None:
        spec = make_spec(
            NVIDIA_IMAGE,
            authSecret="ngc",
            multiNode={"parallelism": {"tensor": 8, "pipeline": 2}, "mpi": {"mpiStartTimeout": 60}},
        )
        leader, worker = (server(t) for t in templates(render(spec)))
        for container in (leader, worker):
            assert value(container, "NIM_MULTI_NODE") == "1"
            assert value(container, "NIM_NUM_COMPUTE_NODES") == "2"
            assert value(container, "NIM_MPI_ALLOW_RUN_AS_ROOT") == "0"
            rank = field_path(container, "NIM_NODE_RANK")
            assert rank == "metadata.labels['leaderworkerset.sigs.k8s.io/worker-index']"
            # The image's own entrypoint reads its role from the environment.
            assert "command" not in container
            assert env(container)["NGC_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "ngc"
        assert value(leader, "NIM_LEADER_ROLE") == "1"
        assert value(leader, "GPUS_PER_NODE") == "8"
        assert value(leader, "CLUSTER_START_TIMEOUT") == "60"
        assert field_path(leader, "CLUSTER_SIZE") == (
            "metadata.annotations['leaderworkerset.sigs.k8s.io/size']"
        )
        assert field_path(leader, "GROUP_INDEX") == (
            "metadata.labels['leaderworkerset.sigs.k8s.io/group-index']"
        )
        assert value(worker, "NIM_LEADER_ROLE") == "0"
        assert field_path(worker, "LEADER_NAME") == (
            "metadata.annotations['leaderworkerset.sigs.k8s.io/leader-name']"
        )
        assert field_path(worker, "LWS_NAME") == (
            "metadata.labels['leaderworkerset.sigs.k8s.io/name']"
        )

    def test_start_timeout_defaults_to_nvidias(self) -> None:
        leader, _ = templates(render(make_spec(NVIDIA_IMAGE)))
        assert value(server(leader), "CLUSTER_START_TIMEOUT") == "300"

    def test_our_image_runs_a_ray_head_then_the_server_and_workers_join_it(self) -> None:
        leader, worker = (server(t) for t in templates(render(make_spec(args=["--x"]))))
        shell, flag, script, zeroth = leader["command"]
        assert (shell, flag, zeroth) == ("/bin/sh", "-c", "nim-serve")
        head, _, serve = script.partition(" && ")
        assert head.startswith("ray start --head --port=6379")
        assert serve == 'exec nim-serve "$@"'  # the container's args reach the server
        assert leader["args"] == ["--x"]
        assert worker["command"][:2] == ["/bin/sh", "-c"]
        assert '--address="$LWS_LEADER_ADDRESS:6379"' in worker["command"][2]
        assert "--block" in worker["command"][2]
        assert "args" not in worker

    def test_json_logging_is_off_unless_the_user_sets_it(self) -> None:
        # NIM's docs: multi-node Ray workers have no JSON log formatter.
        for template in templates(render(make_spec(NVIDIA_IMAGE))):
            assert value(server(template), "NIM_JSONL_LOGGING") == "0"
        spec = make_spec(NVIDIA_IMAGE, env=[{"name": "NIM_JSONL_LOGGING", "value": "1"}])
        for template in templates(render(spec)):
            assert value(server(template), "NIM_JSONL_LOGGING") == "1"

    def test_a_users_command_runs_on_the_leader_unchanged(self) -> None:
        leader, _ = templates(render(make_spec(command=["my-launcher"])))
        assert server(leader)["command"] == ["my-launcher"]

    def test_the_users_env_wins(self) -> None:
        spec = make_spec(env=[{"name": "NIM_NUM_COMPUTE_NODES", "value": "7"}])
        for template in templates(render(spec)):
            entries = [e for e in server(template)["env"] if e["name"] == "NIM_NUM_COMPUTE_NODES"]
            assert entries == [{"name": "NIM_NUM_COMPUTE_NODES", "value": "7"}]

    def test_workers_keep_storage_security_and_init_containers_not_sidecars(self) -> None:
        busybox = {"repository": "busybox", "tag": "1.36"}
        init = {"name": "prepare", "image": busybox}
        sidecar = {"name": "logs", "image": busybox}
        spec = make_spec(
            storage={"pvc": {"name": "shared-models"}},
            initContainers=[init],
            sidecarContainers=[sidecar],
        )
        leader, worker = templates(render(spec))
        assert [c["name"] for c in leader["spec"]["containers"]] == ["nim", "logs"]
        assert [c["name"] for c in worker["spec"]["containers"]] == ["nim"]
        assert [c["name"] for c in worker["spec"]["initContainers"]] == ["prepare"]
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in worker["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == ["shared-models"]
        assert worker["spec"]["securityContext"]["runAsNonRoot"] is True
        assert server(worker)["securityContext"]["allowPrivilegeEscalation"] is False

    @pytest.mark.parametrize("image", [NVIDIA_IMAGE, OUR_IMAGE])
    def test_pod_templates_are_valid_pods(self, image: dict[str, str]) -> None:
        spec = make_spec(image, authSecret="ngc", env=[{"name": "A", "value": "b"}])
        for template in templates(render(spec)):
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", **template["metadata"]},
                "spec": template["spec"],
            }
            kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)

    def test_the_sample_renders_a_group_of_two_eight_gpu_pods(self) -> None:
        sample = yaml.safe_load(SAMPLE.read_text())
        lws = render(NIMServiceSpec.from_body(sample["spec"]))
        assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
        for template in templates(lws):
            assert server(template)["resources"]["limits"]["nvidia.com/gpu"] == 8
            claim = template["spec"]["volumes"][0]["persistentVolumeClaim"]
            assert claim["claimName"] == "llama-pvc"

    @pytest.mark.parametrize("image", [NVIDIA_IMAGE, OUR_IMAGE])
    def test_both_pods_meet_the_restricted_pod_security_standard(
        self, image: dict[str, str]
    ) -> None:
        for template in templates(render(make_spec(image))):
            annotations = template["metadata"].get("annotations")
            assert restricted_violations(template["spec"], annotations) == []

    def test_deterministic(self) -> None:
        assert render(make_spec()) == render(make_spec())


class TestMultiNodeAmongTheChildren:
    def kinds(self, spec: NIMServiceSpec, *, supported: bool = True) -> dict[str, bool]:
        children = render_children(
            OWNER,
            spec,
            replicas=1,
            service_monitor_supported=False,
            leader_worker_sets_supported=supported,
        )
        return {ref.kind: manifest is not None for ref, manifest in children}

    def test_the_leader_worker_set_replaces_the_deployment(self) -> None:
        kinds = self.kinds(make_spec())
        assert kinds["LeaderWorkerSet"] is True
        assert kinds["Deployment"] is False  # deleted, if ours

    def test_without_multi_node_a_leader_worker_set_is_deleted(self) -> None:
        kinds = self.kinds(NIMServiceSpec.model_validate({"image": OUR_IMAGE}))
        assert kinds["Deployment"] is True
        assert kinds["LeaderWorkerSet"] is False

    def test_left_out_where_the_kind_is_not_served(self) -> None:
        kinds = self.kinds(NIMServiceSpec.model_validate({"image": OUR_IMAGE}), supported=False)
        assert "LeaderWorkerSet" not in kinds

    def handover(self, spec: NIMServiceSpec, keep: str) -> dict[str, Any]:
        children = render_children(
            OWNER,
            spec,
            replicas=1,
            service_monitor_supported=False,
            leader_worker_sets_supported=True,
            keep_workload=keep,
        )
        return {ref.kind: manifest for ref, manifest in children}

    def test_a_kept_deployment_is_neither_applied_nor_deleted_and_still_selected(self) -> None:
        children = self.handover(make_spec(), "Deployment")
        assert "Deployment" not in children
        assert children["LeaderWorkerSet"] is not None
        # Its pods and the leaders; workers have no api port, so they are no endpoints.
        assert children["Service"]["spec"]["selector"] == selector_labels("llama")
        assert children["Service"]["spec"]["ports"][0]["targetPort"] == "api"

    def test_a_kept_leader_worker_set_is_neither_applied_nor_deleted(self) -> None:
        plain = NIMServiceSpec.model_validate({"image": OUR_IMAGE})
        children = self.handover(plain, "LeaderWorkerSet")
        assert "LeaderWorkerSet" not in children
        assert children["Deployment"] is not None
        assert children["Service"]["spec"]["selector"] == selector_labels("llama")

    def test_the_service_selects_the_leaders(self) -> None:
        service = render_service(OWNER, make_spec())
        assert service["spec"]["selector"] == {**selector_labels("llama"), ROLE_LABEL: "leader"}
        plain = render_service(OWNER, NIMServiceSpec.model_validate({"image": OUR_IMAGE}))
        assert plain["spec"]["selector"] == selector_labels("llama")


class TestMultiNodeSpec:
    @pytest.mark.parametrize(
        "fields",
        [
            {"scale": {"enabled": True, "hpa": {"maxReplicas": 2}}},
            {"autoscaling": {"maxReplicas": 2}},
        ],
    )
    def test_no_autoscaling(self, fields: dict[str, Any]) -> None:
        with pytest.raises(ValidationError, match=r"scaled by spec\.replicas only"):
            make_spec(**fields)

    @pytest.mark.parametrize(
        "fields",
        [{"gpu": {"count": 4}}, {"resources": {"limits": {"nvidia.com/gpu": 2}}}],
    )
    def test_a_second_different_gpu_count_is_refused(self, fields: dict[str, Any]) -> None:
        with pytest.raises(ValidationError, match=r"multiNode\.parallelism\.tensor GPUs"):
            make_spec(**fields)

    def test_the_same_gpu_count_is_accepted(self) -> None:
        assert make_spec(gpu={"count": 8}).gpu_count() == 8

    def test_only_lws(self) -> None:
        with pytest.raises(ValidationError):
            make_spec(multiNode={"backendType": "mpijob", "parallelism": {}})

    def test_parallelism_is_required(self) -> None:
        with pytest.raises(ValidationError):
            make_spec(multiNode={"backendType": "lws"})
