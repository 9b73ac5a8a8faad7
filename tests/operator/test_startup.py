"""The operator process leaves the official Kubernetes client out when its credentials allow.

(The operator end-to-end tests run `python -m nim_operator` against the emulator's token
kubeconfig, so they run the operator without the client; this checks the decision itself.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nim_operator.startup import official_client_needed

REPO = Path(__file__).resolve().parents[2]


def kubeconfig(path: Path, user: dict[str, Any], *, current: str | None = "ctx") -> Path:
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://203.0.113.7:6443"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": user}],
    }
    if current is not None:
        config["current-context"] = current
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("user", "needed"),
    [
        ({"token": "abc"}, False),
        ({"client-certificate-data": "x", "client-key-data": "y"}, False),
        ({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws"}}, True),
        ({"auth-provider": {"name": "oidc"}}, True),
        ({"tokenFile": "/var/run/token"}, True),
    ],
)
def test_only_credentials_kopf_cannot_read_need_the_client(
    tmp_path: Path, user: dict[str, Any], needed: bool
) -> None:
    path = kubeconfig(tmp_path / "config", user)
    assert official_client_needed({"KUBECONFIG": str(path)}, tmp_path / "no-token") is needed


def test_kubeconfig_files_are_merged_first_wins(tmp_path: Path) -> None:
    exec_user = kubeconfig(tmp_path / "a", {"exec": {"command": "gcloud"}}, current=None)
    token_user = kubeconfig(tmp_path / "b", {"token": "abc"})
    # The current context comes from b, the user "u" from a (the first file to name it).
    env = {"KUBECONFIG": f"{exec_user}:{token_user}"}
    assert official_client_needed(env, tmp_path / "no-token") is True


def test_a_pod_uses_its_service_account(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBECONFIG": str(tmp_path / "absent")}
    assert official_client_needed(env, token) is False


def test_an_unreadable_kubeconfig_is_left_to_the_client(tmp_path: Path) -> None:
    broken = tmp_path / "config"
    broken.write_text("users: [unclosed")
    assert official_client_needed({"KUBECONFIG": str(broken)}, tmp_path / "no-token") is True
    absent = {"KUBECONFIG": str(tmp_path / "absent")}
    assert official_client_needed(absent, tmp_path / "no-token") is True


def test_the_operator_starts_and_logs_in_without_the_client(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", {"token": "abc"})
    script = """
import asyncio, json, sys
from nim_operator.startup import leave_out_official_client
left_out = leave_out_official_client()
import kopf
import nim_operator.handlers
from nim_operator.kube import login
info = asyncio.run(login())
print(json.dumps({
    "left_out": left_out,
    "client_loaded": sys.modules.get("kubernetes") is not None,
    "server": info.server,
    "token": info.token == "abc",
}))
"""
    env = {"KUBECONFIG": str(path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {
        "left_out": True,
        "client_loaded": False,
        "server": "https://203.0.113.7:6443",
        "token": True,
    }
