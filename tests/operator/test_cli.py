"""The operator's command line as a user meets it: `nim-operator` and `python -m nim_operator`.

`--help` prints usage and touches no cluster; a bad setting, missing credentials, an
unreachable API server or refused credentials is one line on stderr and a non-zero exit at once
(not kopf's startup retried every 60 s with a traceback); an API outage after a good start is
still ridden out. Every case runs the real command in a process with a clean environment.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import kmock
import pytest

from nim_operator.kube import KubeClient, ResourceKind
from nim_operator.settings import Settings
from tests.operator.test_operator_e2e import cpu_spec
from tests.support.kmock_cluster import EmulatedCluster, project_crds
from tests.support.kmock_harness import (
    OperatorProcess,
    connection_from_kubeconfig,
    delete_namespace,
    eventually,
)

NIM_OPERATOR = str(Path(sys.executable).with_name("nim-operator"))
PYTHON_M = [sys.executable, "-m", "nim_operator"]
# As the operator image runs it: kopf's command line under `nim-operator run`.
IMAGE_COMMAND = [NIM_OPERATOR, "run", "-m", "nim_operator.handlers", "--standalone"]
# Generous for a loaded machine; the commands take about a second.
QUICKLY = 30.0
OUTAGE_SECONDS = 4.0
NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")


def run(argv: Sequence[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The command with nothing in its environment but PATH, HOME and `env`."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **env}
    return subprocess.run(
        list(argv), env=clean, capture_output=True, text=True, timeout=QUICKLY, check=False
    )


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("nim-operator: "), lines[0]
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty home: no ~/.kube/config to fall back on."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def kubeconfig(path: Path, server: str, *, token: str = "t0ken") -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        f"clusters: [{{name: c, cluster: {{server: '{server}'}}}}]\n"
        f"users: [{{name: u, user: {{token: {token}}}}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
    )
    return path


@pytest.mark.parametrize("argv", [[NIM_OPERATOR], PYTHON_M], ids=["nim-operator", "python -m"])
def test_help_prints_usage_with_every_setting(argv: list[str], home: Path) -> None:
    done = run([*argv, "--help"], home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: nim-operator")
    text = " ".join(done.stdout.split())  # argparse wraps the help text
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description for --help"
        assert f"--{name.replace('_', '-')}" in text
        assert f"{' '.join(field.description.split())} [NIM_OPERATOR_{name.upper()}" in text
    assert done.stderr == ""


def test_kopfs_command_line_is_still_there_under_run(home: Path) -> None:
    """The image runs `nim-operator run -m nim_operator.handlers ...` (kopf's CLI)."""
    done = run([NIM_OPERATOR, "run", "--help"], home)
    assert done.returncode == 0, done.stderr
    assert "--standalone" in done.stdout
    assert "--liveness" in done.stdout


@pytest.mark.parametrize(
    "argv", [[NIM_OPERATOR], PYTHON_M, IMAGE_COMMAND], ids=["nim-operator", "python -m", "image"]
)
def test_without_any_cluster_it_says_where_it_looked(argv: list[str], home: Path) -> None:
    done = run(argv, home)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "no Kubernetes cluster to talk to" in line
    assert "KUBECONFIG is not set and ~/.kube/config does not exist" in line
    assert "KUBERNETES_SERVICE_HOST" in line
    assert "set KUBECONFIG" in line


def test_plain_kopf_run_stops_too_instead_of_retrying(home: Path, tmp_path: Path) -> None:
    """`kopf run -m nim_operator.handlers` has no preflight of ours: the startup handler fails
    permanently (kopf exits 1 with the cause) rather than retrying every 60 s."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        server = f"http://127.0.0.1:{closed.getsockname()[1]}"
    kopf = str(Path(sys.executable).with_name("kopf"))
    argv = [kopf, "run", "-m", "nim_operator.handlers", "--standalone"]
    done = run(argv, home, KUBECONFIG=str(kubeconfig(tmp_path / "kc", server)))
    assert done.returncode == 1
    assert f"cannot reach the Kubernetes API server at {server}" in done.stderr
    assert "will try again" not in done.stderr


def test_a_kubeconfig_that_is_not_there_is_named(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    done = run([NIM_OPERATOR], home, KUBECONFIG=str(missing))
    assert done.returncode == 1
    assert f"KUBECONFIG={missing} names no existing file" in one_line(done.stderr)


def test_a_pod_without_its_token_is_told_so(home: Path) -> None:
    done = run([NIM_OPERATOR], home, KUBERNETES_SERVICE_HOST="10.0.0.1")
    assert done.returncode == 1
    assert "no service account token at /var/run/secrets" in one_line(done.stderr)


def test_a_kubeconfig_without_a_current_context_cannot_log_in(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    done = run([NIM_OPERATOR], home, KUBECONFIG=str(path))
    assert done.returncode == 1
    assert f"cannot log in with kubeconfig {path}" in one_line(done.stderr)


def test_an_unreachable_api_server_is_named(home: Path, tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        server = f"http://127.0.0.1:{closed.getsockname()[1]}"
    done = run([NIM_OPERATOR], home, KUBECONFIG=str(kubeconfig(tmp_path / "kc", server)))
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert f"cannot reach the Kubernetes API server at {server}" in line
    assert f"kubeconfig {tmp_path / 'kc'}" in line


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster(project_crds()) as emulated:
        yield emulated


def test_refused_credentials_are_named(
    cluster: EmulatedCluster, home: Path, tmp_path: Path
) -> None:
    """The emulator answers 401 to the token, as an API server does to an unknown one."""
    unknown = "a-token-nobody-issued"
    body = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 401}
    refusal = kmock.Response(status=401, payload={**body, "reason": "Unauthorized"})

    def with_unknown_token(request: kmock.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {unknown}"

    cluster.inspect(lambda emulator: emulator.add_fault(100, with_unknown_token, refusal))
    path = cluster.write_kubeconfig(tmp_path / "kc", token=unknown)
    done = run([NIM_OPERATOR], home, KUBECONFIG=str(path))
    assert done.returncode == 1
    assert f"{cluster.url} (credentials: kubeconfig {path}) refused the credentials" in (
        one_line(done.stderr)
    )


@pytest.mark.parametrize("argv", [[NIM_OPERATOR], IMAGE_COMMAND], ids=["nim-operator", "image"])
def test_a_bad_setting_names_its_variable_and_flag(argv: list[str], home: Path) -> None:
    done = run(argv, home, NIM_OPERATOR_WATCH_TIMEOUT="90.5")
    assert done.returncode == 2
    assert "NIM_OPERATOR_WATCH_TIMEOUT (--watch-timeout): " in one_line(done.stderr)


def test_a_flag_wins_over_the_environment(home: Path) -> None:
    """A bad variable overridden by a good flag passes validation (and stops at the cluster)."""
    bad_env = {"NIM_OPERATOR_WATCH_TIMEOUT": "soon"}
    assert run([NIM_OPERATOR], home, **bad_env).returncode == 2
    done = run([NIM_OPERATOR, "--watch-timeout", "120"], home, **bad_env)
    assert done.returncode == 1
    assert "no Kubernetes cluster to talk to" in one_line(done.stderr)
    done = run([NIM_OPERATOR, "--watch-timeout", "0"], home)
    assert done.returncode == 2
    assert "NIM_OPERATOR_WATCH_TIMEOUT" in one_line(done.stderr)


def test_a_missing_crd_is_a_warning_not_an_exit(home: Path, tmp_path: Path) -> None:
    """The operator may start before `kubectl apply -k` has installed its CRD."""
    with EmulatedCluster() as bare:
        path = bare.write_kubeconfig(tmp_path / "kc")
        process = subprocess.Popen(
            [NIM_OPERATOR, "--liveness-endpoint", "http://127.0.0.1:0/healthz"],
            env={"PATH": os.environ["PATH"], "HOME": str(home), "KUBECONFIG": str(path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if "does not serve nimstack.dev/v1alpha1 nimservices yet" in line:
                    break
            else:
                raise AssertionError("no warning about the missing CRD")
            assert "kubectl apply -k crds/" in line
            assert process.poll() is None  # still running, waiting for the CRD
        finally:
            process.terminate()
            process.wait(timeout=QUICKLY)


async def test_an_outage_after_start_is_ridden_out(
    cluster: EmulatedCluster, tmp_path: Path
) -> None:
    """Once running, an API server that drops every connection for a few seconds (a restart,
    a load balancer failing over) is retried: the operator stays up and catches up after.
    (5xx answers, timeouts and dropped watches are covered one by one in test_faults.py.)"""
    namespace = f"cli-{secrets.token_hex(3)}"
    token = f"outage-{namespace}"  # this test's requests, among the module's
    process = OperatorProcess(
        cluster.write_kubeconfig(tmp_path / "kc", token=token),
        tmp_path / "operator.log",
        namespaces=namespace,
        api_retries="1",
        api_timeout="2",
    )
    process.start()
    api = KubeClient(connection_from_kubeconfig(tmp_path / "kc"), user_agent="cli-test")
    try:
        # The command line checked the cluster; the startup handler did not ask again.
        checks = cluster.inspect(
            lambda emulator: [
                r
                for r in emulator
                if str(r.url).endswith("/apis/nimstack.dev/v1alpha1")
                and r.headers.get("User-Agent") == "nimstack-operator"
                and r.headers.get("Authorization") == f"Bearer {token}"
            ]
        )
        assert len(checks) == 1, checks
        await api.create(NAMESPACES, None, {"metadata": {"name": namespace}})
        outage_ends = time.monotonic() + OUTAGE_SECONDS
        cut_requests: list[str] = []

        async def cut(request: kmock.Request) -> kmock.Response | None:
            cut_requests.append(str(request.url))
            transport = request._raw_request.transport if request._raw_request else None
            if transport is not None:
                transport.abort()
            return kmock.Response(status=503)

        def during_outage(request: kmock.Request) -> bool:
            return time.monotonic() < outage_ends and "cli-test" not in request.headers.get(
                "User-Agent", ""
            )

        cluster.inspect(lambda emulator: emulator.add_fault(10**6, during_outage, cut))
        cluster.inspect(lambda emulator: emulator.drop_watches(abort=True))
        await asyncio.sleep(OUTAGE_SECONDS + 1)
        assert any("watch=true" in url for url in cut_requests), cut_requests  # it did retry
        assert process.alive(), process.log_tail()
        body = {"metadata": {"name": "after"}, "spec": cpu_spec()}
        await api.create(NIMSERVICES, namespace, body)

        async def reconciled() -> bool:
            return await api.get(DEPLOYMENTS, namespace, "after") is not None

        await eventually(
            reconciled, within=60, what="a reconcile after the outage", context=process.log_tail
        )
        assert process.alive()
    finally:
        await delete_namespace(api, namespace)
        await api.close()
        process.stop()
