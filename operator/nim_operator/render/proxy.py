"""spec.proxy: outbound proxy variables and the CA bundle that trusts the proxy.

NVIDIA's operator copies every `*.crt`/`*.pem` of `certConfigMap` into the image's trust store
with a root init container running `update-ca-certificates`. Pods here stay non-root, so the
ConfigMap is mounted read-only instead and one key, `ca-bundle.crt`, is the bundle the HTTP
clients use (OpenSSL via SSL_CERT_FILE, `requests` via REQUESTS_CA_BUNDLE). That file replaces
the default trust store, so it must hold the public roots too.

The NIMService's server (`proxy_env`, `proxy_volume`, `proxy_volume_mount`) and a NIMCache's
download Job (render/nimcache_job.py) both render through the proxy-level helpers below.
"""

from __future__ import annotations

from typing import Any, Protocol

from nim_operator.models import NIMServiceSpec

__all__ = [
    "PROXY_CA_BUNDLE_KEY",
    "PROXY_CA_PATH",
    "PROXY_CA_VOLUME",
    "ProxySettings",
    "ca_bundle_env",
    "ca_bundle_volume",
    "proxy_env",
    "proxy_variables",
    "proxy_volume",
    "proxy_volume_mount",
]

PROXY_CA_VOLUME = "proxy-ca"
PROXY_CA_PATH = "/etc/nim/proxy-ca"
PROXY_CA_BUNDLE_KEY = "ca-bundle.crt"


class ProxySettings(Protocol):
    """NVIDIA's proxy fields, as a NIMService's and a NIMCache's spec.proxy both have them."""

    @property
    def http_proxy(self) -> str | None: ...
    @property
    def https_proxy(self) -> str | None: ...
    @property
    def no_proxy(self) -> str | None: ...
    @property
    def cert_config_map(self) -> str | None: ...


def _cert_config_map(spec: NIMServiceSpec) -> str | None:
    # NVIDIA treats an empty name as "no bundle"; so do we.
    if spec.proxy is None or not spec.proxy.cert_config_map:
        return None
    return spec.proxy.cert_config_map


def proxy_variables(proxy: ProxySettings | None) -> list[dict[str, Any]]:
    """HTTP_PROXY, HTTPS_PROXY, NO_PROXY in both cases (tools read one or the other); nothing
    for settings left empty."""
    if proxy is None:
        return []
    env: list[dict[str, Any]] = []
    for name, value in (
        ("HTTP_PROXY", proxy.http_proxy),
        ("HTTPS_PROXY", proxy.https_proxy),
        ("NO_PROXY", proxy.no_proxy),
    ):
        if value:
            env += [{"name": name, "value": value}, {"name": name.lower(), "value": value}]
    return env


def ca_bundle_env(directory: str) -> list[dict[str, Any]]:
    """The variables that make OpenSSL and `requests` trust `<directory>/ca-bundle.crt` only."""
    bundle = f"{directory}/{PROXY_CA_BUNDLE_KEY}"
    return [
        {"name": "SSL_CERT_FILE", "value": bundle},
        {"name": "REQUESTS_CA_BUNDLE", "value": bundle},
    ]


def ca_bundle_volume(volume: str, config_map: str) -> dict[str, Any]:
    """The ConfigMap as a volume holding only the bundle key."""
    # Listing the key makes a ConfigMap without it fail the mount (an Event names the key)
    # instead of starting a container whose TLS fails later.
    item = {"key": PROXY_CA_BUNDLE_KEY, "path": PROXY_CA_BUNDLE_KEY}
    return {"name": volume, "configMap": {"name": config_map, "items": [item]}}


def proxy_env(spec: NIMServiceSpec) -> list[dict[str, Any]]:
    """The server's proxy variables, then the CA bundle variables."""
    env = proxy_variables(spec.proxy)
    if _cert_config_map(spec):
        env += ca_bundle_env(PROXY_CA_PATH)
    return env


def proxy_volume(spec: NIMServiceSpec) -> dict[str, Any] | None:
    """The certConfigMap as a volume holding only the bundle key; None without one."""
    name = _cert_config_map(spec)
    if name is None:
        return None
    return ca_bundle_volume(PROXY_CA_VOLUME, name)


def proxy_volume_mount(spec: NIMServiceSpec) -> dict[str, Any] | None:
    if _cert_config_map(spec) is None:
        return None
    return {"name": PROXY_CA_VOLUME, "mountPath": PROXY_CA_PATH, "readOnly": True}
