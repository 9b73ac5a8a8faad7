"""spec.proxy (NVIDIA's field): proxy variables and the CA bundle of the server container."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_deployment
from nim_operator.render.proxy import proxy_env, proxy_volume
from tests.support.pod_security import restricted_violations

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")
# As NVIDIA's field reference writes it.
NVIDIA_PROXY = {
    "httpProxy": "http://proxy.corp.example:3128",
    "httpsProxy": "http://proxy.corp.example:3128",
    "noProxy": "localhost,127.0.0.1,.svc,.cluster.local",
    "certConfigMap": "corp-ca",
}


def make_spec(**fields: Any) -> NIMServiceSpec:
    body = {"image": {"repository": "nimstack/nim-server", "tag": "0.1.0"}}
    return NIMServiceSpec.model_validate({**body, **fields})


def pod(**fields: Any) -> dict[str, Any]:
    deployment = render_deployment(OWNER, make_spec(**fields), replicas=1)
    kubernetes_validate.validate(deployment, "1.31", strict=True)
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def server_env(pod_spec: dict[str, Any]) -> dict[str, str | None]:
    (server,) = pod_spec["containers"]
    return {entry["name"]: entry.get("value") for entry in server["env"]}


class TestProxyEnv:
    def test_no_proxy_section_adds_nothing(self) -> None:
        assert proxy_env(make_spec()) == []
        env = server_env(pod())
        assert not {"HTTP_PROXY", "https_proxy", "SSL_CERT_FILE"} & set(env)

    def test_both_cases_of_every_variable(self) -> None:
        env = server_env(pod(proxy=NVIDIA_PROXY))
        for name, value in (
            ("HTTP_PROXY", NVIDIA_PROXY["httpProxy"]),
            ("HTTPS_PROXY", NVIDIA_PROXY["httpsProxy"]),
            ("NO_PROXY", NVIDIA_PROXY["noProxy"]),
        ):
            assert env[name] == value
            assert env[name.lower()] == value

    def test_only_the_settings_given(self) -> None:
        names = [e["name"] for e in proxy_env(make_spec(proxy={"httpsProxy": "http://p:3128"}))]
        assert names == ["HTTPS_PROXY", "https_proxy"]

    def test_user_env_overrides_a_proxy_variable(self) -> None:
        env = server_env(
            pod(proxy=NVIDIA_PROXY, env=[{"name": "NO_PROXY", "value": "internal.example"}])
        )
        assert env["NO_PROXY"] == "internal.example"
        assert env["no_proxy"] == NVIDIA_PROXY["noProxy"]


class TestProxyCABundle:
    def test_config_map_mounted_read_only_and_pointed_at(self) -> None:
        pod_spec = pod(proxy=NVIDIA_PROXY)
        volumes = {v["name"]: v for v in pod_spec["volumes"]}
        assert volumes["proxy-ca"]["configMap"] == {
            "name": "corp-ca",
            "items": [{"key": "ca-bundle.crt", "path": "ca-bundle.crt"}],
        }
        (server,) = pod_spec["containers"]
        mounts = {m["name"]: m for m in server["volumeMounts"]}
        assert mounts["proxy-ca"] == {
            "name": "proxy-ca",
            "mountPath": "/etc/nim/proxy-ca",
            "readOnly": True,
        }
        env = server_env(pod_spec)
        assert env["SSL_CERT_FILE"] == "/etc/nim/proxy-ca/ca-bundle.crt"
        assert env["REQUESTS_CA_BUNDLE"] == "/etc/nim/proxy-ca/ca-bundle.crt"

    def test_still_restricted(self) -> None:
        # NVIDIA's root update-ca-certificates init container is what this design avoids.
        pod_spec = pod(proxy=NVIDIA_PROXY)
        assert restricted_violations(pod_spec) == []
        assert "initContainers" not in pod_spec

    def test_empty_config_map_name_means_none(self) -> None:
        spec = make_spec(proxy={"httpProxy": "http://p:3128", "certConfigMap": ""})
        assert proxy_volume(spec) is None
        env = server_env(pod(proxy={"httpProxy": "http://p:3128", "certConfigMap": ""}))
        assert "SSL_CERT_FILE" not in env
