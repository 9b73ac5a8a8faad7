"""podman as the image tests use it: build the project's images, play a Deployment, look inside.

Only what the machine offers is used: podman as root with runc and the project's
scripts/podman/containers.conf, images built by scripts/build-images.sh from a debootstrap base,
containers on podman's own network or the host's loopback. Nothing is pulled from a registry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "scripts" / "podman" / "containers.conf"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
SERVER_IMAGE = f"nimstack/nim-server:{VERSION}-cpu"
OPERATOR_IMAGE = f"nimstack/nim-operator:{VERSION}"


def unavailable_reason() -> str | None:
    """Why the image tests cannot run here, or None when they can."""
    for tool in ("podman", "debootstrap", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs podman, buildah, runc, debootstrap)"
    if os.geteuid() != 0:
        return "the image tests run podman as root (rootless podman needs subuid setup)"
    return None


def _environment() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(
    *args: str, check: bool = True, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS`; on failure the error says what podman printed."""
    result = subprocess.run(
        ["podman", *args],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def torch_wheel_directory() -> Path | None:
    """The local directory pip takes torch's CPU wheel from (PIP_FIND_LINKS), if any."""
    for entry in os.environ.get("PIP_FIND_LINKS", "").split():
        directory = Path(entry.removeprefix("file://"))
        if directory.is_dir() and any(directory.glob("torch-*+cpu-*.whl")):
            return directory
    return None


def build_images(log: Path) -> None:
    """scripts/build-images.sh with a debootstrap base; its output goes to `log`."""
    command = ["bash", str(ROOT / "scripts" / "build-images.sh"), "--engine", "podman"]
    command.append("--local-base")
    wheels = torch_wheel_directory()
    if wheels is not None:
        command += ["--wheels", str(wheels)]
    with log.open("w") as out:
        result = subprocess.run(
            command, env=_environment(), stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if result.returncode != 0:
        raise AssertionError(
            f"build-images.sh exited {result.returncode}:\n{log.read_text()[-5000:]}"
        )


def image_size(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)


def run_in_image(image: str, *command: str, user: str | None = None) -> str:
    """stdout of `command` run in a throwaway container of `image` (the entrypoint replaced)."""
    options = ["--rm", "--network", "none", "--entrypoint", command[0]]
    if user is not None:
        options += ["--user", user]
    return podman("run", *options, image, *command[1:]).stdout


@dataclass
class PlayedDeployment:
    """A Deployment run by `podman kube play`: its single pod, addressed by container name."""

    manifest: Path
    container: str

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.container, *command, check=check)

    def status_of_pid1(self) -> dict[str, str]:
        """The fields of /proc/1/status inside the container (the entrypoint's process)."""
        text = self.exec("cat", "/proc/1/status").stdout
        return {
            key.strip(): value.strip()
            for key, _, value in (line.partition(":") for line in text.splitlines())
        }

    def logs(self) -> str:
        result = podman("logs", self.container, check=False)
        return (result.stdout + result.stderr)[-6000:]

    def signal(self, name: str) -> None:
        podman("kill", "--signal", name, self.container)

    def wait(self, timeout: float) -> int:
        """The container's exit code once it has stopped."""
        return int(podman("wait", self.container, timeout=timeout).stdout.split()[0])

    def down(self) -> None:
        podman("kube", "down", str(self.manifest), check=False, timeout=120)


def play(deployment: dict[str, object], directory: Path, *, container: str) -> PlayedDeployment:
    """`podman kube play` the Deployment; its pod is `<name>-pod` (podman's naming)."""
    manifest = directory / "deployment.yaml"
    manifest.write_text(yaml.safe_dump(deployment, sort_keys=False))
    played = PlayedDeployment(manifest, container)
    played.down()  # a pod left over from an interrupted run
    podman("kube", "play", "--replace", str(manifest), timeout=300)
    return played


def published_on_loopback(deployment: dict[str, object], ports: Sequence[int]) -> None:
    """Publish the container ports on 127.0.0.1, as podman kube play needs hostPort/hostIP.

    Kubernetes routes to pods through the Service; podman 4.3 has no `--publish` for kube play,
    so the test's copy of the manifest says where each port appears on the host.
    """
    spec = deployment["spec"]
    assert isinstance(spec, dict)
    (container,) = spec["template"]["spec"]["containers"]
    for port, host_port in zip(container["ports"], ports, strict=True):
        port["hostPort"] = host_port
        port["hostIP"] = "127.0.0.1"


__all__: Sequence[str] = [
    "OPERATOR_IMAGE",
    "SERVER_IMAGE",
    "PlayedDeployment",
    "build_images",
    "image_size",
    "play",
    "podman",
    "published_on_loopback",
    "run_in_image",
    "torch_wheel_directory",
    "unavailable_reason",
]
