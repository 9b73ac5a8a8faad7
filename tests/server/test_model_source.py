"""How a configured model name becomes what the engine loads (no engine needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nim_server.model_source import ModelSourceError, resolve_model


def test_hf_uri_is_the_hub_id(tmp_path: Path) -> None:
    resolved = resolve_model("hf://HuggingFaceTB/SmolLM2-135M-Instruct", None, tmp_path)
    assert resolved.path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolved.served_name == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_file_uri_is_the_local_directory(tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    resolved = resolve_model(f"file://{model}", "served", tmp_path / "cache")
    assert resolved.path == str(model)
    assert resolved.served_name == "served"


def test_file_uri_to_a_file_that_is_no_model(tmp_path: Path) -> None:
    stray = tmp_path / "notes.txt"
    stray.write_text("not a model")
    with pytest.raises(ModelSourceError, match=r"neither a model directory nor a \.gguf file"):
        resolve_model(f"file://{stray}", None, tmp_path / "cache")
