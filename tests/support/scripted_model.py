"""A tiny Llama whose greedy answer to every chat prompt is a fixed script of tokens.

Random weights never write `<think>` or `<tool_call>`, so the parsers that read what a real
model writes (reasoning, auto tool choice) could only be tested on recorded text. This model
makes the real engine write it: each script piece becomes one token of the tokenizer (an added
token where BPE would split it), and the weights map each token to the next piece.

How the weights do it: every layer's attention and MLP output projections are zero, so the
residual stream at a position is just its token's embedding. Each token of the chain gets its
own basis vector as embedding, and the LM head row of the token that must follow it points along
that vector; every other logit is zero. So the next token depends only on the current one: the
chain runs from the last token of the generation prompt through the script to end of turn.
A piece may therefore appear only once in a script.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from tests.support.tiny_model import build_tiny_model

# Logit of the scripted next token (after the final RMSNorm scales a basis vector by
# sqrt(hidden_size)); every other logit is 0, so greedy and low-temperature sampling agree.
SCRIPT_LOGIT = 40.0


def build_scripted_model(directory: Path, script: Sequence[str], **tiny_options: int) -> Path:
    """Build the model in ``directory``: any chat prompt is answered with ``script``, then EOS."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    build_tiny_model(directory, **tiny_options)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.add_tokens([piece for piece in script if len(_encode(tokenizer, piece)) != 1])
    tokenizer.save_pretrained(directory)

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "anything"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    chain = [int(prompt["input_ids"][-1]), *(_single_token(tokenizer, p) for p in script)]
    chain.append(tokenizer.eos_token_id)
    if len(set(chain)) != len(chain):
        raise ValueError(f"each token may appear once in the chain: {chain}")

    model = LlamaForCausalLM.from_pretrained(directory, torch_dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    hidden = model.config.hidden_size
    if len(chain) - 1 > hidden:
        raise ValueError(f"a script of at most {hidden - 1} pieces fits this model")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        head = model.lm_head.weight
        embed.zero_()
        head.zero_()
        for basis, (current, following) in enumerate(itertools.pairwise(chain)):
            embed[current, basis] = 1.0
            head[following, basis] = SCRIPT_LOGIT / hidden**0.5
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def _encode(tokenizer: object, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))  # type: ignore[attr-defined]


def _single_token(tokenizer: object, piece: str) -> int:
    (token_id,) = _encode(tokenizer, piece)
    return int(token_id)
