"""Client API keys: one key for every model, and/or keys that open only some models.

Sources (any of them turns authentication on): NIM_GATEWAY_API_KEY (one key, every model);
a YAML/JSON file, NIM_GATEWAY_API_KEYS_FILE; a Kubernetes Secret, NIM_GATEWAY_API_KEY_SECRET,
with `api-key` (every model) and/or `models.yaml`. The file and `models.yaml` map a model id to a
key or a list of keys; the id `*` means every model:

    "*": [admin-key]
    meta/llama-3.1-8b-instruct: [team-a-key, team-b-key]
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ANY_MODEL", "KeySet", "bearer_token", "keys_from_mapping", "keys_from_secret"]

ANY_MODEL = "*"


@dataclass(frozen=True)
class KeySet:
    global_keys: frozenset[str] = frozenset()
    model_keys: Mapping[str, frozenset[str]] = field(default_factory=dict)
    enabled: bool = False

    def merged(self, other: KeySet) -> KeySet:
        models = {
            m: self.model_keys.get(m, frozenset()) | other.model_keys.get(m, frozenset())
            for m in {*self.model_keys, *other.model_keys}
        }
        return KeySet(self.global_keys | other.global_keys, models, self.enabled or other.enabled)

    def is_global(self, key: str | None) -> bool:
        return not self.enabled or (key is not None and _contains(self.global_keys, key))

    def allows(self, key: str | None, model: str) -> bool:
        if self.is_global(key):
            return True
        return key is not None and _contains(self.model_keys.get(model, frozenset()), key)

    def known(self, key: str | None) -> bool:
        """A key that opens at least one model."""
        return self.is_global(key) or (
            key is not None and any(_contains(keys, key) for keys in self.model_keys.values())
        )


def _contains(keys: Iterable[str], key: str) -> bool:
    # Compare every key in constant time, so response timing does not reveal a key's prefix.
    found = False
    for candidate in keys:
        found |= hmac.compare_digest(candidate.encode(), key.encode())
    return found


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def keys_from_mapping(mapping: Mapping[str, Any]) -> KeySet:
    global_keys: set[str] = set()
    model_keys: dict[str, frozenset[str]] = {}
    for model, value in mapping.items():
        keys = {value} if isinstance(value, str) else {str(v) for v in value or []}
        keys.discard("")
        if str(model) == ANY_MODEL:
            global_keys |= keys
        else:
            model_keys[str(model)] = frozenset(keys)
    return KeySet(frozenset(global_keys), model_keys, enabled=True)


def keys_from_file(path: Path) -> KeySet:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of model id to key(s)")
    return keys_from_mapping(data)


def keys_from_secret(secret: Mapping[str, Any]) -> KeySet:
    """`api-key` and `models.yaml` of a Secret object as the API returns it (base64 data)."""
    data = {
        key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()
    }
    keys = KeySet(enabled=True)
    if data.get("api-key", "").strip():
        keys = keys.merged(KeySet(frozenset({data["api-key"].strip()}), enabled=True))
    if "models.yaml" in data:
        parsed = yaml.safe_load(data["models.yaml"]) or {}
        if isinstance(parsed, Mapping):
            keys = keys.merged(keys_from_mapping(parsed))
    return keys
