"""spec.proxy: the server container's outbound proxy variables and the CA bundle that trusts it.

NVIDIA's operator copies every `*.crt`/`*.pem` of `certConfigMap` into the image's trust store
with a root init container running `update-ca-certificates`. Pods here stay non-root, so the
ConfigMap is mounted read-only instead and one key, `ca-bundle.crt`, is the bundle the server's
HTTP clients use (OpenSSL via SSL_CERT_FILE, `requests` via REQUESTS_CA_BUNDLE). That file
replaces the default trust store, so it must hold the public roots too.
"""

from __future__ import annotations

from typing import Any

from nim_operator.models import NIMServiceSpec

__all__ = [
    "PROXY_CA_BUNDLE_KEY",
    "PROXY_CA_PATH",
    "PROXY_CA_VOLUME",
    "proxy_env",
    "proxy_volume",
    "proxy_volume_mount",
]

PROXY_CA_VOLUME = "proxy-ca"
PROXY_CA_PATH = "/etc/nim/proxy-ca"
PROXY_CA_BUNDLE_KEY = "ca-bundle.crt"


def _cert_config_map(spec: NIMServiceSpec) -> str | None:
    # NVIDIA treats an empty name as "no bundle"; so do we.
    if spec.proxy is None or not spec.proxy.cert_config_map:
        return None
    return spec.proxy.cert_config_map


def proxy_env(spec: NIMServiceSpec) -> list[dict[str, Any]]:
    """HTTP_PROXY, HTTPS_PROXY, NO_PROXY in both cases (tools read one or the other), then the
    CA bundle variables; nothing for settings left empty."""
    proxy = spec.proxy
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
    if _cert_config_map(spec):
        bundle = f"{PROXY_CA_PATH}/{PROXY_CA_BUNDLE_KEY}"
        env += [
            {"name": "SSL_CERT_FILE", "value": bundle},
            {"name": "REQUESTS_CA_BUNDLE", "value": bundle},
        ]
    return env


def proxy_volume(spec: NIMServiceSpec) -> dict[str, Any] | None:
    """The certConfigMap as a volume holding only the bundle key; None without one."""
    name = _cert_config_map(spec)
    if name is None:
        return None
    # Listing the key makes a ConfigMap without it fail the mount (an Event names the key)
    # instead of starting a server whose TLS fails later.
    item = {"key": PROXY_CA_BUNDLE_KEY, "path": PROXY_CA_BUNDLE_KEY}
    return {"name": PROXY_CA_VOLUME, "configMap": {"name": name, "items": [item]}}


def proxy_volume_mount(spec: NIMServiceSpec) -> dict[str, Any] | None:
    if _cert_config_map(spec) is None:
        return None
    return {"name": PROXY_CA_VOLUME, "mountPath": PROXY_CA_PATH, "readOnly": True}
