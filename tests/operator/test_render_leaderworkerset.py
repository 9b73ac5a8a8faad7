"""render_leader_worker_set and spec.multiNode's place among the children: pure, no cluster.

The LeaderWorkerSet is not a built-in kind, so kubernetes_validate cannot check it whole; each
of its pod templates is checked as a Pod against Kubernetes' own schema instead, and the
LeaderWorkerSet's own fields against what the LWS API (leaderworkerset.x-k8s.io/v1) defines.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from nim_operator.models import MULTI_NODE_GPU_MISMATCH, MULTI_NODE_MPI_OR_RAY, NIMServiceSpec
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
        # The server's workload is named after the NIMService (others, e.g. `<name>-epp`, are not).
        return {ref.kind: manifest is not None for ref, manifest in children if ref.name == "llama"}

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
        return {ref.kind: manifest for ref, manifest in children if ref.name == "llama"}

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

    def test_unset_parallelism_is_a_group_of_one_single_gpu_pod(self) -> None:
        # NVIDIA's newest CRD requires parallelism; its earlier one (size, gpusPerPod) defaulted
        # both to 1, so a multiNode without either is what that version meant by it.
        multi_node = make_spec(multiNode={"backendType": "lws"}).multi_node
        assert multi_node is not None
        assert (multi_node.pipeline_size(), multi_node.tensor_size()) == (1, 1)


RAY_WORKER_PROBE_TIMING = {
    "initialDelaySeconds": 30,
    "timeoutSeconds": 5,
    "periodSeconds": 10,
    "failureThreshold": 3,
}


def ray_spec(image: dict[str, str], ray: dict[str, Any], **fields: Any) -> NIMServiceSpec:
    multi_node = {"parallelism": {"tensor": 8, "pipeline": 2}, "ray": ray}
    return make_spec(image, multiNode=multi_node, **fields)


class TestRayStartUp:
    """multiNode.ray, as NVIDIA's operator renders it (internal/controller/platform/standalone)."""

    def test_nvidia_images_get_nvidias_ray_launcher_on_the_given_port(self) -> None:
        leader, worker = (
            server(t) for t in templates(render(ray_spec(NVIDIA_IMAGE, {"rayPort": 6380})))
        )
        assert leader["args"] == ["nim-serve-ray", "--head", "--port", "6380"]
        assert "command" not in leader  # the image's entrypoint
        assert leader["ports"] == [
            {"name": "api", "containerPort": 8000, "protocol": "TCP"},
            {"name": "ray", "containerPort": 6380, "protocol": "TCP"},
        ]
        assert worker["args"] == [
            "nim-serve-ray",
            "--head-address",
            "$(LWS_LEADER_ADDRESS):6380",
        ]
        assert "command" not in worker
        assert "ports" not in worker
        assert worker["startupProbe"] == {
            "exec": {"command": ["/bin/sh", "-c", "ray status"]},
            **RAY_WORKER_PROBE_TIMING,
        }
        assert leader["startupProbe"]["httpGet"]["port"] == "api"  # the server's, unchanged

    def test_the_port_defaults_to_rays(self) -> None:
        spec = NIMServiceSpec.model_validate(
            {"image": NVIDIA_IMAGE, "multiNode": {"parallelism": {}, "ray": {}}}
        )
        leader, worker = (server(t) for t in templates(render(spec)))
        assert leader["args"][-1] == "6379"
        assert worker["args"][-1] == "$(LWS_LEADER_ADDRESS):6379"

    def test_nvidias_multi_node_environment_is_unchanged(self) -> None:
        # NVIDIA's Ray path sets the same variables as its MPI path, and no Ray-specific one.
        with_ray = render(ray_spec(NVIDIA_IMAGE, {"rayPort": 6379}))
        without = render(make_spec(NVIDIA_IMAGE))
        for ray_template, mpi_template in zip(templates(with_ray), templates(without), strict=True):
            assert server(ray_template)["env"] == server(mpi_template)["env"]

    def test_a_users_args_replace_the_leaders_launcher_not_the_workers(self) -> None:
        spec = ray_spec(NVIDIA_IMAGE, {"rayPort": 6379}, args=["--my-flag"], command=["launch"])
        leader, worker = (server(t) for t in templates(render(spec)))
        assert (leader["command"], leader["args"]) == (["launch"], ["--my-flag"])
        assert "command" not in worker
        assert worker["args"][0] == "nim-serve-ray"

    def test_our_image_runs_its_ray_head_and_workers_on_the_given_port(self) -> None:
        leader, worker = (
            server(t) for t in templates(render(ray_spec(OUR_IMAGE, {"rayPort": 7000})))
        )
        assert leader["command"] == [
            "/bin/sh",
            "-c",
            'ray start --head --port=7000 --disable-usage-stats && exec nim-serve "$@"',
            "nim-serve",
        ]
        assert {"name": "ray", "containerPort": 7000, "protocol": "TCP"} in leader["ports"]
        assert worker["command"] == [
            "/bin/sh",
            "-c",
            'exec ray start --address="$LWS_LEADER_ADDRESS:7000" --block --disable-usage-stats',
        ]
        status = 'ray status --address="$LWS_LEADER_ADDRESS:7000"'
        assert worker["startupProbe"] == {
            "exec": {"command": ["/bin/sh", "-c", status]},
            **RAY_WORKER_PROBE_TIMING,
        }

    def test_without_ray_nothing_changes(self) -> None:
        leader, worker = (server(t) for t in templates(render(make_spec(NVIDIA_IMAGE))))
        assert "args" not in leader
        assert "args" not in worker
        assert [p["name"] for p in leader["ports"]] == ["api"]
        assert "startupProbe" not in worker

    @pytest.mark.parametrize("image", [NVIDIA_IMAGE, OUR_IMAGE])
    def test_ray_pods_are_valid_and_restricted(self, image: dict[str, str]) -> None:
        for template in templates(render(ray_spec(image, {"rayPort": 6379}))):
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p"},
                "spec": template["spec"],
            }
            kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
            assert restricted_violations(template["spec"], None) == []

    def test_mpi_and_ray_are_exclusive(self) -> None:
        with pytest.raises(ValidationError, match=re.escape(MULTI_NODE_MPI_OR_RAY)):
            make_spec(multiNode={"parallelism": {}, "mpi": {}, "ray": {}})

    @pytest.mark.parametrize("port", [0, 65536])
    def test_the_port_is_a_port(self, port: int) -> None:
        with pytest.raises(ValidationError):
            ray_spec(NVIDIA_IMAGE, {"rayPort": port})


class TestNvidiasEarlierShape:
    """multiNode.size and multiNode.gpusPerPod, from the NIMService of NVIDIA's operator before
    `parallelism` (size: the LeaderWorkerSet's size and NIM_NUM_COMPUTE_NODES; gpusPerPod:
    GPUS_PER_NODE and each pod's MPI slots)."""

    def test_size_and_gpus_per_pod_are_pipeline_and_tensor(self) -> None:
        spec = make_spec(NVIDIA_IMAGE, multiNode={"size": 3, "gpusPerPod": 4})
        lws = render(spec)
        assert lws["spec"]["leaderWorkerTemplate"]["size"] == 3
        leader, worker = (server(t) for t in templates(lws))
        assert value(leader, "GPUS_PER_NODE") == "4"
        for container in (leader, worker):
            assert value(container, "NIM_NUM_COMPUTE_NODES") == "3"
            assert value(container, "NIM_PIPELINE_PARALLEL_SIZE") == "3"
            assert value(container, "NIM_TENSOR_PARALLEL_SIZE") == "4"
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
        assert render(spec) == render(
            make_spec(NVIDIA_IMAGE, multiNode={"parallelism": {"pipeline": 3, "tensor": 4}})
        )

    def test_the_same_number_in_both_places_is_accepted(self) -> None:
        multi_node = {"size": 2, "gpusPerPod": 8, "parallelism": {"pipeline": 2, "tensor": 8}}
        both = make_spec(multiNode=multi_node).multi_node
        assert both is not None
        assert (both.pipeline_size(), both.tensor_size()) == (2, 8)

    @pytest.mark.parametrize(
        ("multi_node", "message"),
        [
            ({"size": 3, "parallelism": {"pipeline": 2}}, "multiNode.size"),
            ({"gpusPerPod": 4, "parallelism": {"tensor": 8}}, "multiNode.gpusPerPod"),
        ],
    )
    def test_disagreeing_old_and_new_fields_are_refused(
        self, multi_node: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(ValidationError, match=message):
            make_spec(multiNode=multi_node)

    def test_gpus_per_pod_is_the_gpu_count_the_other_fields_must_match(self) -> None:
        with pytest.raises(ValidationError, match=re.escape(MULTI_NODE_GPU_MISMATCH)):
            make_spec(multiNode={"gpusPerPod": 4}, gpu={"count": 8})
        assert make_spec(multiNode={"gpusPerPod": 4}, gpu={"count": 4}).gpu_count() == 4
