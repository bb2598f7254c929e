"""A lean KV-cached forward for Qwen2/Llama-style decoders, used by the HF rollout engine.

For models of a few million parameters, transformers' forward spends most of each decode step in
Python (mask building, cache classes, output wrappers), not in matrix products. This module
runs the same computation straight from the model's own submodules (its Linear, RMSNorm and
rotary-embedding modules, so weights and numerics are the model's): a preallocated K/V buffer
per layer, one ``scaled_dot_product_attention`` call per layer with a boolean padding mask.

Supported: plain (non-peft) ``Qwen2ForCausalLM``/``LlamaForCausalLM`` with full attention
everywhere. Anything else returns None from ``FastDecoder.maybe`` and the engine falls back to
the model's own forward. The rollout test checks the logprobs against a plain forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

SUPPORTED = ("Qwen2ForCausalLM", "LlamaForCausalLM")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class FastDecoder:
    def __init__(self, model: Any, batch: int, max_len: int) -> None:
        self.model = model
        inner = model.model
        cfg = model.config
        self.layers = list(inner.layers)
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        p = next(model.parameters())
        shape = (batch, self.n_kv, max_len, self.head_dim)
        self.k = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in self.layers]
        self.v = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in self.layers]
        self.len = 0
        self.valid = torch.zeros((batch, max_len), dtype=torch.bool, device=p.device)

    @classmethod
    def maybe(cls, model: Any, batch: int, max_len: int) -> FastDecoder | None:
        """A decoder for `model`, or None when its architecture is not the plain one."""
        cfg = getattr(model, "config", None)
        if type(model).__name__ not in SUPPORTED or cfg is None:
            return None
        if getattr(cfg, "use_sliding_window", False) or any(
            t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])
        ):
            return None
        if getattr(model, "_hf_hook", None) is not None:  # offloaded/dispatched models
            return None
        return cls(model, batch, max_len)

    def forward(self, ids: torch.Tensor, valid: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Append `ids` [B, T] (valid: [B, T] bool, pos: [B, T]) and return the logits of the
        last position [B, V]."""
        inner = self.model.model
        b, t = ids.shape
        start, end = self.len, self.len + t
        self.valid[:, start:end] = valid
        h = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(h, pos)  # [B, T, hd]
        cos, sin = cos[:, None], sin[:, None]
        keys_ok = self.valid[:, None, None, :end]  # [B, 1, 1, end]
        if t > 1:  # prefill: causal, and a padding query attends to itself (never all-masked)
            causal = torch.ones(t, end, dtype=torch.bool, device=ids.device).tril(start)
            eye = torch.zeros(t, end, dtype=torch.bool, device=ids.device)
            eye[:, start:end] = torch.eye(t, dtype=torch.bool, device=ids.device)
            mask = (keys_ok & causal) | eye
        else:
            mask = keys_ok
        for i, layer in enumerate(self.layers):
            att = layer.self_attn
            x = layer.input_layernorm(h)
            q = att.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
            k = att.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
            v = att.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            self.k[i][:, :, start:end] = k
            self.v[i][:, :, start:end] = v
            o = F.scaled_dot_product_attention(
                q,
                self.k[i][:, :, :end],
                self.v[i][:, :, :end],
                attn_mask=mask,
                scale=att.scaling,
                enable_gqa=self.n_kv != self.n_heads,
            )
            h = h + att.o_proj(o.transpose(1, 2).reshape(b, t, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        self.len = end
        last = inner.norm(h[:, -1])
        logits: torch.Tensor = self.model.lm_head(last)
        return logits
