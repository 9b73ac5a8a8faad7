"""Serve the API-server emulator on a real localhost port, from a thread of its own.

The operator under test (kopf in a KopfRunner thread, or a subprocess) and the test code each
have their own event loop; the emulator gets a third one, so none of them can starve the others
while blocking (KopfRunner's exit, for one, blocks its caller until the operator stops).
Clients reach it only over HTTP through the kubeconfig this writes, exactly as they would reach a
real cluster.

The emulator refuses what kube-apiserver would refuse (kmock_strict) and records each refusal.
A cluster whose clients sent such a request fails on exit (`with` ends in an AssertionError
listing them), unless the test said the refusal was its own doing (`deliberate`): a test can
mean to send an invalid object, but the operator never should, nor should anything send a query
parameter the API server cannot decode.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import kmock
import yaml

from tests.support.kmock_apiserver import ApiServerEmulator
from tests.support.kmock_strict import Rejection, describe

T = TypeVar("T")

# The CustomResourceDefinitions this project ships, as `kubectl apply -f crds/` installs them.
PROJECT_CRDS = Path(__file__).resolve().parents[2] / "crds"


# The User-Agent of a test client that sends invalid objects on purpose.
DELIBERATELY_INVALID = "nimstack-tests-deliberately-invalid"


def no_rejection_is_deliberate(rejection: Rejection) -> bool:
    return False


def sent_invalid_on_purpose(rejection: Rejection) -> bool:
    """An object a test client said it made invalid (its query parameters must still be valid)."""
    return rejection.cause == "body" and rejection.agent == DELIBERATELY_INVALID


class EmulatedCluster:
    """`with EmulatedCluster(crds) as cluster:` -> an API server at `cluster.url`.

    `crds` are served from the start, Established. `deliberate` tells which refused requests
    (kmock_strict.Rejection) the test meant to send; any other fails the `with` on exit.
    `emulator_options` go to `ApiServerEmulator` (e.g. an `authorizer`).
    """

    def __init__(
        self,
        crds: Iterable[Mapping[str, Any]] = (),
        *,
        deliberate: Callable[[Rejection], bool] = no_rejection_is_deliberate,
        **emulator_options: Any,
    ) -> None:
        self._crds = [dict(crd) for crd in crds]
        self.deliberate = deliberate
        self._emulator_options = emulator_options
        self._thread = threading.Thread(target=self._serve, name="kmock-apiserver", daemon=True)
        self._started = concurrent.futures.Future[str]()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._emulator: ApiServerEmulator | None = None
        self.url = ""

    def __enter__(self) -> Self:
        self._thread.start()
        self.url = self._started.result(timeout=30)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and self._emulator is not None:
                self.assert_no_unexpected_rejections()
        finally:
            if self._loop is not None and self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=30)

    def rejections(self) -> list[Rejection]:
        """Every request the emulator refused as kube-apiserver would have, oldest first."""
        return self.inspect(lambda emulator: list(emulator.strict_checks.rejections))

    def assert_no_unexpected_rejections(self, since: int = 0) -> None:
        """Fail if a request after the `since`-th refusal was refused and not `deliberate`."""
        unexpected = [r for r in self.rejections()[since:] if not self.deliberate(r)]
        if unexpected:
            raise AssertionError(
                "requests a real kube-apiserver would refuse (kmock_strict):\n"
                + "\n".join(describe(unexpected))
            )

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:  # surface startup failures to __enter__
            if not self._started.done():
                self._started.set_exception(e)
            raise
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        emulator_context = ApiServerEmulator(**self._emulator_options)
        async with emulator_context as emulator, kmock.Server(emulator) as server:
            for crd in self._crds:
                emulator.register_crd(crd)
            self._emulator = emulator
            self._started.set_result(str(server.url).rstrip("/"))
            await self._stop.wait()

    def inspect(self, fn: Callable[[ApiServerEmulator], T]) -> T:
        """Run `fn` on the emulator inside its own loop (thread-safe read access)."""
        assert self._loop is not None
        assert self._emulator is not None
        emulator = self._emulator

        async def call() -> T:
            return fn(emulator)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    def write_kubeconfig(self, path: Path, *, token: str = "kmock-test-token") -> Path:
        """A kubeconfig for this server; `token` is the bearer token (an identity for RBAC)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "kmock",
                    "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"},
                }
            ],
            "current-context": "kmock",
        }
        path.write_text(yaml.safe_dump(config))
        return path


def load_crds(directory: Path) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition in the YAML files of `directory`."""
    crds = []
    for path in sorted(directory.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                crds.append(document)
    return crds


def project_crds() -> list[dict[str, Any]]:
    return load_crds(PROJECT_CRDS)


def nimservice_crd() -> dict[str, Any]:
    """The NIMService CRD alone (crds/ also holds the NIMCache's)."""
    (crd,) = [c for c in project_crds() if c["spec"]["names"]["kind"] == "NIMService"]
    return crd
