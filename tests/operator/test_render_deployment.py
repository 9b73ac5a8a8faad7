"""render_deployment: the pod that runs the NIM server."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_deployment, selector_labels
from tests.support.pod_security import restricted_violations

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")
KUBERNETES_VERSION = "1.31"


def make_spec(**fields: Any) -> NIMServiceSpec:
    body = {"image": {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.3.3"}}
    return NIMServiceSpec.model_validate({**body, **fields})


def render(replicas: int | None = 1, **fields: Any) -> dict[str, Any]:
    return render_deployment(OWNER, make_spec(**fields), replicas=replicas)


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod(deployment)["containers"]
    return dict(only)


def env(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container(deployment)["env"]}


class TestRenderDeployment:
    def test_identity_and_ownership(self) -> None:
        deployment = render()
        assert (deployment["apiVersion"], deployment["kind"]) == ("apps/v1", "Deployment")
        meta = deployment["metadata"]
        assert (meta["name"], meta["namespace"]) == ("llama", "models")
        (owner_ref,) = meta["ownerReferences"]
        assert owner_ref["uid"] == OWNER.uid
        assert owner_ref["controller"] is True
        assert owner_ref["blockOwnerDeletion"] is True
        assert deployment["spec"]["selector"] == {"matchLabels": selector_labels("llama")}
        assert (
            selector_labels("llama").items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )

    def test_selector_ignores_user_labels(self) -> None:
        deployment = render(labels={"team": "ml", "app.kubernetes.io/instance": "hijack"})
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["team"] == "ml"
        assert labels["app.kubernetes.io/instance"] == "llama"
        assert deployment["spec"]["selector"]["matchLabels"] == selector_labels("llama")

    def test_image_and_pull_settings(self) -> None:
        deployment = render(
            image={
                "repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct",
                "tag": "1.3.3",
                "pullPolicy": "Always",
                "pullSecrets": ["ngc-secret"],
            },
            command=["nim-serve"],
            args=["--port", "8000"],
        )
        ctr = container(deployment)
        assert ctr["image"] == "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3"
        assert ctr["imagePullPolicy"] == "Always"
        assert (ctr["command"], ctr["args"]) == (["nim-serve"], ["--port", "8000"])
        assert pod(deployment)["imagePullSecrets"] == [{"name": "ngc-secret"}]

    def test_injected_env(self) -> None:
        deployment = render(
            image={"repository": "nimstack/nim-server", "tag": "0.1.0"},
            model={"name": "meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 8192},
            gpu={"count": 2},
        )
        values = {name: entry.get("value") for name, entry in env(deployment).items()}
        assert values == {
            "NIM_SERVER_PORT": "8000",
            "NIM_SERVED_MODEL_NAME": "llama",
            "NIM_MODEL_NAME": "meta-llama/Llama-3.1-8B-Instruct",
            "NIM_MAX_MODEL_LEN": "8192",
            "NIM_CACHE_PATH": "/model-store",
            "NIM_TENSOR_PARALLEL_SIZE": "2",
            "NIM_JSONL_LOGGING": "1",
            "NIM_LOG_LEVEL": "INFO",
            "NIM_SHUTDOWN_TIMEOUT": "30",
        }

    def test_nvidia_nim_image_names_its_own_model(self) -> None:
        # nvcr.io/nim/... images set their served model id themselves; the operator's default
        # (the NIMService name) would rename the model clients know.
        assert "NIM_SERVED_MODEL_NAME" not in env(render())
        other = render(image={"repository": "ghcr.io/acme/nim-server", "tag": "1"})
        assert env(other)["NIM_SERVED_MODEL_NAME"]["value"] == "llama"

    def test_explicit_served_name_is_set_even_for_a_nim_image(self) -> None:
        deployment = render(model={"servedName": "llama-prod"})
        assert env(deployment)["NIM_SERVED_MODEL_NAME"]["value"] == "llama-prod"

    @pytest.mark.parametrize(
        "model", ["hf://meta-llama/Llama-3.1-8B-Instruct", "/models/llama", "file:///models/x"]
    )
    def test_ngc_key_optional_for_hf_and_local_models(self, model: str) -> None:
        variables = env(render(authSecret="hf-token", model={"name": model}))
        assert variables["NGC_API_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "hf-token",
            "key": "NGC_API_KEY",
            "optional": True,
        }
        assert variables["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"

    def test_ngc_key_optional_when_nvidia_style_env_names_an_hf_model(self) -> None:
        # NVIDIA's samples set NIM_MODEL_NAME in env; it replaces model.name in the container,
        # so it decides whether the model comes from NGC.
        hf_env = [{"name": "NIM_MODEL_NAME", "value": "hf://org/model"}]
        variables = env(render(authSecret="hf-token", env=hf_env, model={"name": "meta/x"}))
        assert variables["NIM_MODEL_NAME"]["value"] == "hf://org/model"
        assert variables["NGC_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True
        ngc_env = [{"name": "NIM_MODEL_NAME", "value": "meta/llama3-8b-instruct"}]
        variables = env(render(authSecret="ngc", env=ngc_env, model={"name": "hf://org/m"}))
        assert "optional" not in variables["NGC_API_KEY"]["valueFrom"]["secretKeyRef"]

    @pytest.mark.parametrize("model", [None, "ngc://nim/meta/llama", "meta/llama3-8b-instruct"])
    def test_ngc_key_required_otherwise(self, model: str | None) -> None:
        fields: dict[str, Any] = {"authSecret": "ngc-api"}
        if model is not None:
            fields["model"] = {"name": model}
        reference = env(render(**fields))["NGC_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert "optional" not in reference

    def test_served_name_from_the_model_section(self) -> None:
        deployment = render(model={"servedName": "meta/llama-3.1-8b-instruct"})
        served = env(deployment)["NIM_SERVED_MODEL_NAME"]["value"]
        assert served == "meta/llama-3.1-8b-instruct"

    def test_secrets_only_as_secret_key_refs(self) -> None:
        deployment = render(authSecret="ngc-api")
        variables = env(deployment)
        assert variables["NGC_API_KEY"] == {
            "name": "NGC_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "ngc-api", "key": "NGC_API_KEY"}},
        }
        assert variables["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "ngc-api",
            "key": "HF_TOKEN",
            "optional": True,
        }
        assert all("value" not in variables[name] for name in ("NGC_API_KEY", "HF_TOKEN"))

    def test_no_credentials_without_auth_secret(self) -> None:
        assert not {"NGC_API_KEY", "HF_TOKEN"} & set(env(render()))

    def test_user_env_overrides_in_place_and_appends_in_order(self) -> None:
        deployment = render(
            authSecret="ngc-api",
            env=[
                {"name": "OTEL_SERVICE_NAME", "value": "llama"},
                {"name": "NIM_LOG_LEVEL", "value": "DEBUG"},
                {
                    "name": "NGC_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}},
                },
            ],
        )
        names = [entry["name"] for entry in container(deployment)["env"]]
        assert names.count("NIM_LOG_LEVEL") == 1
        assert names.index("NIM_LOG_LEVEL") < names.index("NIM_SHUTDOWN_TIMEOUT")
        assert names[-1] == "OTEL_SERVICE_NAME"
        variables = env(deployment)
        assert variables["NIM_LOG_LEVEL"]["value"] == "DEBUG"
        assert variables["NGC_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "other"

    def test_user_server_port_moves_the_container_port(self) -> None:
        deployment = render(env=[{"name": "NIM_SERVER_PORT", "value": "9000"}])
        assert container(deployment)["ports"] == [
            {"name": "api", "containerPort": 9000, "protocol": "TCP"}
        ]

    def test_port_named_api(self) -> None:
        assert container(render())["ports"] == [
            {"name": "api", "containerPort": 8000, "protocol": "TCP"}
        ]

    @pytest.mark.parametrize(
        ("fields", "expected_limits", "tp_size"),
        [
            ({}, {"nvidia.com/gpu": 1}, "1"),
            ({"gpu": {"count": 4}}, {"nvidia.com/gpu": 4}, "4"),
            ({"gpu": {"count": 0}}, None, None),
            (
                {"gpu": {"count": 1}, "resources": {"limits": {"memory": "32Gi"}}},
                {"memory": "32Gi", "nvidia.com/gpu": 1},
                "1",
            ),
            ({"resources": {"limits": {"nvidia.com/gpu": 2}}}, {"nvidia.com/gpu": 2}, "2"),
            ({"resources": {"requests": {"nvidia.com/gpu": "2"}}}, {"nvidia.com/gpu": 2}, "2"),
        ],
    )
    def test_gpus(
        self, fields: dict[str, Any], expected_limits: dict[str, Any] | None, tp_size: str | None
    ) -> None:
        deployment = render(**fields)
        assert container(deployment).get("resources", {}).get("limits") == expected_limits
        assert env(deployment).get("NIM_TENSOR_PARALLEL_SIZE", {}).get("value") == tp_size

    @pytest.mark.parametrize(
        ("storage", "expected_volume"),
        [
            ({}, {"name": "model-store", "emptyDir": {}}),
            (
                {"emptyDir": {"sizeLimit": "40Gi"}},
                {"name": "model-store", "emptyDir": {"sizeLimit": "40Gi"}},
            ),
            (
                {"pvc": {"create": True, "size": "50Gi"}},
                {"name": "model-store", "persistentVolumeClaim": {"claimName": "llama-pvc"}},
            ),
            (
                {"pvc": {"name": "shared-cache"}, "readOnly": True},
                {
                    "name": "model-store",
                    "persistentVolumeClaim": {"claimName": "shared-cache", "readOnly": True},
                },
            ),
            (
                {"hostPath": "/data/models"},
                {"name": "model-store", "hostPath": {"path": "/data/models"}},
            ),
        ],
    )
    def test_model_store_volume(
        self, storage: dict[str, Any], expected_volume: dict[str, Any]
    ) -> None:
        volumes = pod(render(storage=storage))["volumes"]
        assert volumes[0] == expected_volume

    def test_model_store_mount_honours_read_only_and_sub_path(self) -> None:
        deployment = render(
            storage={"pvc": {"name": "cache", "subPath": "llama"}, "readOnly": True}
        )
        mount = container(deployment)["volumeMounts"][0]
        assert mount == {
            "name": "model-store",
            "mountPath": "/model-store",
            "readOnly": True,
            "subPath": "llama",
        }

    def test_shared_memory(self) -> None:
        deployment = render(storage={"sharedMemorySizeLimit": "16Gi"})
        assert pod(deployment)["volumes"][1] == {
            "name": "dshm",
            "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"},
        }
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container(deployment)["volumeMounts"]

    def test_read_only_root_filesystem_with_a_writable_tmp(self) -> None:
        deployment = render()
        assert container(deployment)["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"name": "tmp", "emptyDir": {}} in pod(deployment)["volumes"]
        assert {"name": "tmp", "mountPath": "/tmp"} in container(deployment)["volumeMounts"]

    def test_read_only_root_filesystem_can_be_turned_off(self) -> None:
        deployment = render(readOnlyRootFilesystem=False)
        assert container(deployment)["securityContext"]["readOnlyRootFilesystem"] is False
        assert [v["name"] for v in pod(deployment)["volumes"]] == ["model-store", "dshm"]
        assert [m["mountPath"] for m in container(deployment)["volumeMounts"]] == [
            "/model-store",
            "/dev/shm",
        ]

    def test_default_probes_fit_a_large_model(self) -> None:
        ctr = container(render())
        startup, readiness, liveness = (
            ctr["startupProbe"],
            ctr["readinessProbe"],
            ctr["livenessProbe"],
        )
        assert startup["httpGet"]["path"] == readiness["httpGet"]["path"] == "/v1/health/ready"
        assert liveness["httpGet"]["path"] == "/v1/health/live"
        for probe in (startup, readiness, liveness):
            assert probe["httpGet"]["port"] == "api"
            assert probe["timeoutSeconds"] >= 5
        budget = startup.get("initialDelaySeconds", 0) + (
            startup["periodSeconds"] * startup["failureThreshold"]
        )
        assert budget >= 20 * 60

    def test_probe_override_replaces_the_default(self) -> None:
        custom = {"httpGet": {"path": "/v1/health/live", "port": 8000}, "timeoutSeconds": 10}
        ctr = container(render(livenessProbe={"probe": custom}))
        assert ctr["livenessProbe"] == custom

    def test_probe_disabled(self) -> None:
        ctr = container(render(startupProbe={"enabled": False}))
        assert "startupProbe" not in ctr
        assert "readinessProbe" in ctr

    def test_progress_deadline_outlasts_the_startup_budget(self) -> None:
        deployment = render()
        assert deployment["spec"]["progressDeadlineSeconds"] > 20 * 60

    def test_restricted_pod_security(self) -> None:
        pod_spec = pod(render(storage={"pvc": {"create": True, "size": "50Gi"}}))
        assert restricted_violations(pod_spec) == []
        assert pod_spec["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 2000,
            "fsGroup": 2000,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert pod_spec["automountServiceAccountToken"] is False
        assert pod_spec["serviceAccountName"] == "llama"

    def test_user_and_group_ids(self) -> None:
        security = pod(render(userID=1001, groupID=0))["securityContext"]
        assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (1001, 0, 0)

    def test_host_path_is_the_documented_exception(self) -> None:
        assert restricted_violations(pod(render(storage={"hostPath": "/data"}))) == [
            "HostPath Volumes: volume model-store",
            "Volume Types: volume model-store is ['hostPath']",
        ]

    def test_graceful_shutdown(self) -> None:
        deployment = render(shutdownTimeoutSeconds=120)
        pre_stop = container(deployment)["lifecycle"]["preStop"]
        sleep = pre_stop["sleep"]["seconds"]
        assert sleep > 0
        assert pod(deployment)["terminationGracePeriodSeconds"] > 120 + sleep
        assert env(deployment)["NIM_SHUTDOWN_TIMEOUT"]["value"] == "120"

    def test_rollout_keeps_a_single_replica_serving(self) -> None:
        strategy = render()["spec"]["strategy"]
        assert strategy == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }

    @pytest.mark.parametrize("replicas", [0, 1, 3])
    def test_replicas_given(self, replicas: int) -> None:
        assert render(replicas=replicas)["spec"]["replicas"] == replicas

    def test_replicas_left_to_the_hpa(self) -> None:
        assert "replicas" not in render(replicas=None)["spec"]

    def test_tolerations_keep_every_field(self) -> None:
        tolerations = [
            {
                "key": "nvidia.com/gpu",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 600,
            },
            {"key": "pool", "operator": "Equal", "value": "a100", "effect": "NoSchedule"},
        ]
        assert pod(render(tolerations=tolerations))["tolerations"] == tolerations

    def test_scheduling_passes_through(self) -> None:
        affinity = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
                    ]
                }
            }
        }
        pod_spec = pod(
            render(
                nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                affinity=affinity,
                runtimeClassName="nvidia",
                priorityClassName="inference",
                schedulerName="volcano",
            )
        )
        assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert pod_spec["affinity"] == affinity
        assert (pod_spec["runtimeClassName"], pod_spec["priorityClassName"]) == (
            "nvidia",
            "inference",
        )
        assert pod_spec["schedulerName"] == "volcano"

    def test_labels_and_annotations_reach_the_pods(self) -> None:
        deployment = render(labels={"team": "ml"}, annotations={"example.com/owner": "ml"})
        template_meta = deployment["spec"]["template"]["metadata"]
        assert template_meta["labels"]["team"] == "ml"
        assert template_meta["annotations"] == {"example.com/owner": "ml"}
        assert deployment["metadata"]["annotations"] == {"example.com/owner": "ml"}

    @pytest.mark.parametrize(
        "fields",
        [
            {},
            {"gpu": {"count": 0}, "storage": {"emptyDir": {"sizeLimit": "2Gi"}}},
            {
                "authSecret": "ngc",
                "storage": {"pvc": {"name": "c", "subPath": "x"}, "readOnly": True},
            },
            {"storage": {"hostPath": "/mnt/models", "sharedMemorySizeLimit": "1Gi"}},
            {
                "livenessProbe": {"probe": {"grpc": {"port": 9000}}},
                "startupProbe": {"enabled": False},
            },
            {"readinessProbe": {"probe": {"exec": {"command": ["true"]}, "periodSeconds": 3}}},
            {"resources": {"requests": {"cpu": "500m", "memory": 1073741824}}},
            {"tolerations": [{"operator": "Exists"}], "affinity": {"podAntiAffinity": {}}},
        ],
    )
    def test_validates_against_kubernetes(self, fields: dict[str, Any]) -> None:
        kubernetes_validate.validate(render(**fields), KUBERNETES_VERSION, strict=True)
