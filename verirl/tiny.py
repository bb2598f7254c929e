"""Tiny models for demos and tests: a character-level tokenizer and a small Qwen2, built offline.

Nothing here touches a hub. The result is an ordinary HF directory (config.json, safetensors,
tokenizer.json) that transformers, peft and vLLM load like any other model. vLLM on CPU needs a
head dimension of at least 32, so `head_dim = hidden_size / num_attention_heads` is checked.

    python -m verirl.tiny runs/tiny-model --hidden-size 128 --num-layers 4
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PAD, EOS = "<pad>", "<|endoftext|>"


def build_tokenizer(out_dir: str | Path | None = None) -> Any:
    """A byte-level tokenizer with no merges: one token per UTF-8 byte, 258 tokens in all.

    It is a byte-level BPE (Qwen2's own scheme) with an empty merge list, so transformers'
    AutoTokenizer (which picks Qwen2Tokenizer for a Qwen2 config) and vLLM load it unchanged.

    >>> tok = build_tokenizer()
    >>> ids = tok("12+7=")["input_ids"]
    >>> len(ids), tok.decode(ids), len(tok)
    (5, '12+7=', 258)
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, *alphabet])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, padding_side="left"
    )
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def build_tiny_model(
    out_dir: str | Path,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 512,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised Qwen2 causal LM and its tokenizer to `out_dir`.

    The defaults give ~1.0 M parameters with tied embeddings; head_dim = 32.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if hidden_size % num_attention_heads or hidden_size // num_attention_heads < 32:
        raise ValueError(
            f"hidden_size/num_attention_heads must be an integer >= 32 (vLLM needs head_dim >= 32),"
            f" got {hidden_size}/{num_attention_heads}"
        )
    out = Path(out_dir)
    tok = build_tokenizer(out)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id
    )
    model.save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--intermediate-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    path = build_tiny_model(
        a.out_dir,
        hidden_size=a.hidden_size,
        num_layers=a.num_layers,
        intermediate_size=a.intermediate_size,
        seed=a.seed,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
