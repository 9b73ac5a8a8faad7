"""Build a LoRA adapter for the tiny Llama with PEFT, on local disk, with no training."""

from __future__ import annotations

from pathlib import Path


def build_lora_adapter(base_model: Path, directory: Path, *, rank: int = 8, seed: int = 1) -> Path:
    """Write PEFT's adapter_config.json and adapter_model.safetensors into ``directory``.

    The weights are random rather than PEFT's default (B = 0, which leaves the model
    unchanged), so the adapter visibly changes what the model answers.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
    )
    get_peft_model(model, config).save_pretrained(directory)
    return directory
