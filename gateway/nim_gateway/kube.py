"""A minimal Kubernetes API client: credentials, GET, merge patch, and list-then-watch.

Plain HTTP with aiohttp (already the operator's client) rather than the official client, which
is synchronous and costs ~20 MiB at import. Credentials: the pod's service account, else the
current context of $KUBECONFIG (~/.kube/config) with a token or a client certificate; a
kubeconfig user that needs a plugin (`exec`, `auth-provider`) falls back to the official
client's loader, imported only then.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

__all__ = ["ApiError", "KubeApi", "KubeConnection", "connection_from_environment"]

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# A watch ends after this long and is resumed from its resourceVersion: proxies and load
# balancers between us and the API server cut idle connections, and a short watch notices.
WATCH_TIMEOUT_SECONDS = 290


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


@dataclass(frozen=True)
class KubeConnection:
    server: str
    ssl_context: ssl.SSLContext | bool
    token: str | None = None
    # A projected service-account token is rotated on disk: read it at every request.
    token_file: Path | None = None

    def authorization(self) -> dict[str, str]:
        token = self.token
        if self.token_file is not None:
            token = self.token_file.read_text().strip()
        return {"Authorization": f"Bearer {token}"} if token else {}


def connection_from_environment(environ: Mapping[str, str] = os.environ) -> KubeConnection:
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if host and port and (SERVICE_ACCOUNT / "token").exists():
        context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
        server = f"https://{f'[{host}]' if ':' in host else host}:{port}"
        return KubeConnection(server, context, token_file=SERVICE_ACCOUNT / "token")
    return _from_kubeconfig(environ)


def _from_kubeconfig(environ: Mapping[str, str]) -> KubeConnection:
    paths = [Path(p).expanduser() for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    paths = paths or [Path("~/.kube/config").expanduser()]
    contexts: dict[str, Any] = {}
    clusters: dict[str, Any] = {}
    users: dict[str, Any] = {}
    current = None
    for path in paths:
        if not path.exists():
            continue
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        current = current or config.get("current-context")
        for section, into in (("contexts", contexts), ("clusters", clusters), ("users", users)):
            for item in config.get(section) or []:
                into.setdefault(item["name"], item.get(section[:-1]) or {})
    if current is None or current not in contexts:
        raise RuntimeError("no Kubernetes credentials: not in a pod and no kubeconfig context")
    context = contexts[current]
    cluster = clusters[context["cluster"]]
    user = users.get(context.get("user", ""), {})
    server = str(cluster["server"]).rstrip("/")
    ssl_context: ssl.SSLContext | bool = False
    if server.startswith("https"):
        if cluster.get("insecure-skip-tls-verify"):
            ssl_context = ssl.create_default_context()
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
        elif "certificate-authority-data" in cluster:
            ssl_context = ssl.create_default_context(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
            )
        else:
            ssl_context = ssl.create_default_context(cafile=cluster.get("certificate-authority"))
        _load_client_certificate(ssl_context, user)
    if {"exec", "auth-provider", "tokenFile"} & user.keys():
        return KubeConnection(server, ssl_context, token=_token_from_official_client(environ))
    return KubeConnection(server, ssl_context, token=user.get("token"))


def _load_client_certificate(context: ssl.SSLContext | bool, user: Mapping[str, Any]) -> None:
    if not isinstance(context, ssl.SSLContext):
        return
    if "client-certificate" in user:
        context.load_cert_chain(user["client-certificate"], user.get("client-key"))
    elif "client-certificate-data" in user:
        # ssl can load a certificate only from files: write them where only we can read them.
        with tempfile.TemporaryDirectory() as directory:
            cert, key = Path(directory, "cert.pem"), Path(directory, "key.pem")
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.write_bytes(base64.b64decode(user.get("client-key-data", "")))
            context.load_cert_chain(str(cert), str(key))


def _token_from_official_client(environ: Mapping[str, str]) -> str | None:
    import kubernetes.client
    import kubernetes.config

    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=environ.get("KUBECONFIG") or None, client_configuration=config
    )
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix(
        "authorization"
    )
    return str(header).split(" ", 1)[-1] if header else None


class KubeApi:
    def __init__(self, connection: KubeConnection, *, user_agent: str = "nim-gateway") -> None:
        self._connection = connection
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=connection.ssl_context),
            headers={"User-Agent": user_agent, "Accept": "application/json"},
            # A watch event is one line holding a whole object: allow large ones.
            read_bufsize=2**20,
        )

    async def close(self) -> None:
        await self._session.close()

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=30)
        async with self._session.get(
            self._connection.server + path,
            params=params or {},
            headers=self._connection.authorization(),
            timeout=timeout,
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, text[:500])
            data: dict[str, Any] = json.loads(text)
            return data

    async def merge_patch(
        self, path: str, patch: Mapping[str, Any], *, field_manager: str = "nim-gateway"
    ) -> dict[str, Any]:
        """A JSON merge patch; with metadata.resourceVersion, a 409 if the object moved on."""
        async with self._session.patch(
            self._connection.server + path,
            params={"fieldManager": field_manager},
            data=json.dumps(patch),
            headers={
                **self._connection.authorization(),
                "Content-Type": "application/merge-patch+json",
            },
            timeout=aiohttp.ClientTimeout(total=30),
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, text[:500])
            data: dict[str, Any] = json.loads(text)
            return data

    async def watch(
        self, path: str, *, relist: Callable[[list[dict[str, Any]]], None]
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """List `path`, hand the items to `relist`, then yield (event type, object) forever.

        The watch resumes from the last resourceVersion seen; when that is too old (410 Gone)
        or the connection fails, it lists again, so `relist` always gets the whole truth.
        """
        delay = 0.5
        while True:
            try:
                listing = await self.get(path)
                relist(list(listing.get("items") or []))
                version = str(listing["metadata"].get("resourceVersion", ""))
                delay = 0.5
                while True:
                    gone = False
                    async for kind, obj in self._watch_once(path, version):
                        if kind == "ERROR":
                            gone = obj.get("code") == 410
                            if not gone:
                                raise ApiError(int(obj.get("code") or 500), str(obj))
                            break
                        version = str(obj.get("metadata", {}).get("resourceVersion", version))
                        if kind != "BOOKMARK":
                            yield kind, obj
                    if gone:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure: wait a little, then list again
                log.warning("watch of %s failed (%s); listing again in %.1fs", path, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _watch_once(
        self, path: str, version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        params = {
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS),
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
        async with self._session.get(
            self._connection.server + path,
            params=params,
            headers=self._connection.authorization(),
            timeout=timeout,
        ) as response:
            if response.status == 410:
                yield "ERROR", {"code": 410}
                return
            if response.status >= 400:
                raise ApiError(response.status, (await response.text())[:500])
            async for line in response.content:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    log.warning("undecodable watch event from %s: %.200r", path, line)
                    continue
                yield str(event.get("type")), dict(event.get("object") or {})
