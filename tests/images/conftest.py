"""The project's images, built once per run by scripts/build-images.sh (podman, debootstrap base).

Every test here is marked `images` and skipped, with the reason, where podman cannot run: .ci/run
installs podman, buildah, runc and debootstrap with apt, so CI always runs them.
"""

from __future__ import annotations

import pytest

from tests.support.podman import build_images, unavailable_reason


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Both images, built from this checkout (a second build reuses podman's layer cache)."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    build_images(tmp_path_factory.mktemp("images") / "build.log")
