"""A lean forward for Qwen2/Qwen3/Llama-style decoders: training logits and KV-cached decoding.

For models of a few million parameters on CPU, transformers' forward spends much of its time in
Python (module calls, mask building, cache classes, output wrappers), not in matrix products.
This module runs the same computation straight from the model's own parameters (its Linear,
RMSNorm and embedding weights, its rotary frequencies). ``decoder_layer`` is the one definition
of a layer (RMSNorm, q/k/v with optional bias and Qwen3's q/k RMSNorm, RoPE, attention, o-proj,
SiLU-gated MLP); the four callers differ only in how attention reads keys and values:

- ``train_forward``: whole right-padded sequences with autograd (RMSNorm with a closed-form
  backward; explicit short-sequence attention on CPU), for the trainer's ``forward_logits``;
- ``train_forward_shared``: rows that share a prompt (a GRPO group) run that prompt once;
- ``LeanDecoder.prefill`` / ``.step``: decoding for the hf rollout engine, a preallocated K/V
  buffer per layer written in place, each distinct prompt prefilled once, and, for models up to
  ``FUSE_MAX_PARAMS``, q|k|v and gate|up as one matmul each on concatenated weight copies;
  ``.take`` / ``.load`` / ``.extend`` carry a multi-turn trajectory's keys and values from one
  turn to the next, so a turn runs only the tokens appended since the last.

Where it runs (``verirl.train.model.resolve_forward``, config ``model.forward``): ``auto`` takes
it only on CPU in float32/bfloat16, where it is measured faster and tested equal; on CUDA the
model's own forward (SDPA, flash-attention) runs. Supported: plain (non-peft)
``Qwen2ForCausalLM``/``Qwen3ForCausalLM``/``LlamaForCausalLM`` with full attention everywhere,
SiLU MLPs and position-independent RoPE scaling (default, linear, llama3, yarn); anything else
fails ``is_plain`` and callers use the model's own forward. tests/test_lean_forward.py,
tests/test_rollout_hf.py and tests/test_real_arch.py check it against transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

SUPPORTED = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM")
# Models up to this many parameters decode with fused q|k|v and gate|up weight copies (one
# matmul each instead of three and two; ~6% less time per decode step on the tiny model).
FUSE_MAX_PARAMS = 2**27
# Score matrices up to this many elements per layer (64 MiB in float32) are formed explicitly.
EXPLICIT_ATTENTION_ELEMENTS = 2**24

Norm = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def is_plain(model: Any) -> bool:
    """True for an unwrapped Qwen2/Qwen3/Llama causal LM this module computes exactly (not
    peft, DDP, FSDP or offloaded; full attention; SiLU MLP; RoPE independent of length)."""
    cfg = getattr(model, "config", None)
    if type(model).__name__ not in SUPPORTED or cfg is None:
        return False
    if getattr(cfg, "use_sliding_window", False) or any(
        t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])
    ):
        return False
    if getattr(model, "_hf_hook", None) is not None:  # offloaded/dispatched models
        return False
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "pretraining_tp", 1) > 1:
        return False
    # Dynamic/long RoPE rescale with the sequence length: no fixed table.
    rope = str(getattr(model.model.rotary_emb, "rope_type", "default"))
    return "dynamic" not in rope and rope != "longrope"


def lean_by_default(model: Any) -> bool:
    """``model.forward: auto``'s rule: the lean path for a plain model on CPU in float32 (measured
    faster there, tested equal); elsewhere the model's own forward. bfloat16 on CPU stays with
    transformers: ``benchmarks/gpu_check.py --device cpu --smoke`` measured the lean bf16
    forward+backward 2.4x slower (31.6 s vs 13.0 s), while fp32 was faster (5.8 s vs 7.2 s)."""
    if not is_plain(model):
        return False
    p = next(model.parameters())
    return p.device.type == "cpu" and p.dtype == torch.float32


def _bias(linear: Any) -> torch.Tensor | None:
    b: torch.Tensor | None = linear.bias
    return b


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if any(t is None for t in parts) else torch.cat(parts)  # type: ignore[arg-type]


class _Layer:
    """One decoder layer's parameters (the model's own tensors; with `fuse`, also q|k|v and
    gate|up concatenated copies, valid until the next optimizer step)."""

    def __init__(self, index: int, layer: Any, cfg: Any, fuse: bool = False) -> None:
        att, mlp = layer.self_attn, layer.mlp
        self.index = index
        self.nh, self.nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.nh
        self.ln1, self.ln2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        self.eps1 = float(layer.input_layernorm.variance_epsilon)
        self.eps2 = float(layer.post_attention_layernorm.variance_epsilon)
        self.q, self.qb = att.q_proj.weight, _bias(att.q_proj)
        self.k, self.kb = att.k_proj.weight, _bias(att.k_proj)
        self.v, self.vb = att.v_proj.weight, _bias(att.v_proj)
        self.o, self.ob = att.o_proj.weight, _bias(att.o_proj)
        # Qwen3: RMSNorm over each head's q and k before RoPE
        qn, kn = getattr(att, "q_norm", None), getattr(att, "k_norm", None)
        self.qn = None if qn is None else (qn.weight, float(qn.variance_epsilon))
        self.kn = None if kn is None else (kn.weight, float(kn.variance_epsilon))
        self.gate, self.gb = mlp.gate_proj.weight, _bias(mlp.gate_proj)
        self.up, self.ub = mlp.up_proj.weight, _bias(mlp.up_proj)
        self.down, self.db = mlp.down_proj.weight, _bias(mlp.down_proj)
        self.scale = float(att.scaling)
        self.inter = self.gate.shape[0]
        self.qkv: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.gate_up: tuple[torch.Tensor, torch.Tensor | None] | None = None
        biases = [self.qb, self.kb, self.vb]
        if fuse and (all(b is None for b in biases) or all(b is not None for b in biases)):
            self.qkv = (torch.cat((self.q, self.k, self.v)), _cat(biases))
        if fuse and (self.gb is None) == (self.ub is None):
            self.gate_up = (torch.cat((self.gate, self.up)), _cat([self.gb, self.ub]))

    def heads(self, x: torch.Tensor, norm: Norm) -> tuple[torch.Tensor, ...]:
        """q [..., nh, hd], k and v [..., nkv, hd] of the normed input x [..., H]."""
        nh, nkv, hd = self.nh, self.nkv, self.hd
        if self.qkv is not None:
            qkv = F.linear(x, *self.qkv).unflatten(-1, (nh + 2 * nkv, hd))
            q, k, v = qkv.split((nh, nkv, nkv), dim=-2)
        else:
            q = F.linear(x, self.q, self.qb).unflatten(-1, (nh, hd))
            k = F.linear(x, self.k, self.kb).unflatten(-1, (nkv, hd))
            v = F.linear(x, self.v, self.vb).unflatten(-1, (nkv, hd))
        if self.qn is not None and self.kn is not None:
            q, k = norm(q, *self.qn), norm(k, *self.kn)
        return q, k, v

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """down(silu(gate(x)) · up(x))."""
        if self.gate_up is not None:
            gu = F.linear(x, *self.gate_up)
            act = F.silu(gu[..., : self.inter]) * gu[..., self.inter :]
        else:
            act = F.silu(F.linear(x, self.gate, self.gb)) * F.linear(x, self.up, self.ub)
        return F.linear(act, self.down, self.db)


Attend = Callable[[_Layer, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def decoder_layer(
    L: _Layer, h: torch.Tensor, norm: Norm, rope: Callable[[torch.Tensor], torch.Tensor],
    attend: Attend,
) -> torch.Tensor:  # fmt: skip
    """One pre-norm decoder layer on token-major hidden states h [..., H]:
    h + o(attend(rope(q), rope(k), v)), then h + mlp(norm(h)). `attend` takes q [..., nh, hd],
    k/v [..., nkv, hd] and returns [..., nh·hd]; `norm` is RMSNorm (Zhang & Sennrich 2019)."""
    q, k, v = L.heads(norm(h, L.ln1, L.eps1), norm)
    h = h + F.linear(attend(L, rope(q), rope(k), v), L.o, L.ob)
    return h + L.mlp(norm(h, L.ln2, L.eps2))


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2/Llama RMSNorm without autograd bookkeeping (decoding): normalise in float32,
    cast back, then scale by w."""
    if x.dtype == torch.float32 and w.dtype == torch.float32:
        return F.rms_norm(x, w.shape, w, eps)
    return w * F.rms_norm(x.float(), w.shape, None, eps).to(x.dtype)


class _RMSNorm(torch.autograd.Function):
    """y = w · x̂, x̂ = x / √(mean x² + ε), in float32 like the model's RMSNorm, with the
    closed-form backward ∂x = (g·w − x̂·mean(g·w·x̂)) / √(mean x² + ε), ∂w = Σ g·x̂: two saved
    tensors and ~5 elementwise passes instead of autograd's ~12."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        x32 = x.float()
        r = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True).add_(eps))  # [..., 1]
        xh = x32 * r
        ctx.save_for_backward(xh, w, r)
        ctx.x_dtype = x.dtype
        return w * xh.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        xh, w, r = ctx.saved_tensors
        gw = (g * w).float()
        dx = (gw - xh * (gw * xh).mean(-1, keepdim=True)).mul_(r)
        dw = (g.float() * xh).flatten(0, -2).sum(0).to(w.dtype)
        return dx.to(ctx.x_dtype), dw, None


def train_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    out: torch.Tensor = _RMSNorm.apply(x, w, eps)
    return out


def _rope_tables(model: Any, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin_rot) [P, hd] for positions [P], from the model's own rotary module.
    rotate_half(x)·sin = roll(x, hd/2)·[−sin₁, sin₂]: one roll instead of chunk/neg/cat."""
    inner = model.model
    cos, sin = inner.rotary_emb(inner.embed_tokens.weight[:1], positions[None])  # [1, P, hd]
    half = cos.shape[-1] // 2
    return cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)


def _roper(cos: torch.Tensor, sin_rot: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """x ↦ x·cos + rotate_half(x)·sin for x [..., heads, hd] (cos/sin_rot [..., 1, hd])."""
    half = cos.shape[-1] // 2
    return lambda x: torch.addcmul(x * cos, x.roll(half, -1), sin_rot)


def _head(model: Any, h: torch.Tensor, norm: Norm) -> torch.Tensor:
    inner = model.model
    h = norm(h, inner.norm.weight, float(inner.norm.variance_epsilon))
    return F.linear(h, model.lm_head.weight, _bias(model.lm_head))


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """softmax(q·kᵀ·scale + bias)·v for q [B, nh, Tq, hd], k/v [B, nkv, Tk, hd] -> [B, nh, Tq, hd]:
    the one attention of training, prefill and decode. `bias` is additive (0 where a query may
    see a key, −inf elsewhere; every query sees one), broadcastable to [B, 1, Tq, Tk]; None is
    causal (Tq = Tk).

    On CPU with small score matrices, as batched GEMMs over the explicit scores: the query heads
    sharing a K/V head are stacked along rows (transformers' repeat_kv order, no K/V copies);
    the CPU flash kernel, tiled for long sequences, takes about twice as long forward and
    backward at L < 100. Larger ones and GPUs use ``scaled_dot_product_attention`` (memory O(L))."""
    b, nh, tq, hd = q.shape
    nkv, tk = k.shape[1], k.shape[2]
    if q.device.type != "cpu" or b * nh * tq * tk > EXPLICIT_ATTENTION_ELEMENTS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=bias is None,
                                              scale=scale, enable_gqa=nkv != nh)  # fmt: skip
    g = nh // nkv
    if bias is None:
        bias = torch.full((1, 1, tq, tk), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
    # the bias of each stacked row [B·nkv, g·Tq, Tk]: one for all rows (no copy) or per row
    if bias.shape[0] == 1:
        rows = bias[0, 0].expand(tq, tk).repeat(g, 1).expand(b * nkv, g * tq, tk)
    else:
        rows = bias[:, :, None].expand(b, nkv, g, tq, tk).reshape(b * nkv, g * tq, tk)
    s = torch.baddbmm(rows, q.reshape(b * nkv, g * tq, hd),
                      k.reshape(b * nkv, tk, hd).transpose(1, 2), alpha=scale)  # fmt: skip
    return torch.bmm(s.softmax(-1), v.reshape(b * nkv, tk, hd)).view(b, nh, tq, hd)


def train_forward(
    model: Any, input_ids: torch.Tensor, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, L−start, V], last hidden state [B, L−start, H]): ``train_hidden`` and the
    LM head."""
    h = train_hidden(model, input_ids, start)
    return F.linear(h, model.lm_head.weight, _bias(model.lm_head)), h


def train_hidden(model: Any, input_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Last hidden state (after the final norm) [B, L−start, H] of positions start… of the
    right-padded `input_ids` [B, L], with autograd. Right padding needs no mask beyond the
    causal one: a real token never attends to a later (padding) position. `model` must pass
    ``is_plain``; dropout is not applied (call it only when attention dropout is 0)."""
    inner = model.model
    b, t = input_ids.shape
    cos, sin_rot = _rope_tables(model, torch.arange(t, device=input_ids.device))
    rope = _roper(cos[:, None], sin_rot[:, None])  # [L, 1, hd] against [B, L, heads, hd]

    def attend(L: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        o = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), L.scale)
        return o.transpose(1, 2).reshape(b, t, -1)  # type: ignore[no-any-return]

    h = F.embedding(input_ids, inner.embed_tokens.weight)  # [B, L, H]
    for i, layer in enumerate(inner.layers):
        h = decoder_layer(_Layer(i, layer, model.config), h, train_norm, rope, attend)
    return train_norm(h[:, start:], inner.norm.weight, float(inner.norm.variance_epsilon))


def shared_prompt_rows(
    input_ids: torch.Tensor, lengths: list[int], prompt_lens: list[int], min_saving: float = 0.1
) -> tuple[list[list[int]], list[int], list[list[int]]] | None:
    """(distinct prompts, each row's prompt index, each row's completion tokens) when rows
    share prompts enough to pay: ``train_forward_shared`` then runs `U·Lp + B·Lc` token
    positions instead of `B·L`; None when no prompt is shared (SFT rows) or that saves less
    than `min_saving` of them."""
    ids = input_ids.tolist()
    index: dict[tuple[int, ...], int] = {}
    of = [index.setdefault(tuple(ids[b][:p]), len(index)) for b, p in enumerate(prompt_lens)]
    prompts = [list(p) for p in index]
    completions = [r[p:n] for r, n, p in zip(ids, lengths, prompt_lens, strict=True)]
    b, width = len(ids), input_ids.shape[1]
    lp = max(len(p) for p in prompts)
    lc = max(len(c) for c in completions)
    if len(prompts) == b or lc < 1 or len(prompts) * lp + b * lc > (1 - min_saving) * b * width:
        return None
    return prompts, of, completions


def train_forward_shared(
    model: Any,
    input_ids: torch.Tensor,
    prompt_lens: list[int],
    prompts: list[list[int]],
    prompt_of: list[int],
    completions: list[list[int]],
    start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, last hidden state) of ``train_hidden_shared``, as ``train_forward``."""
    h = train_hidden_shared(model, input_ids, prompt_lens, prompts, prompt_of, completions, start)
    return F.linear(h, model.lm_head.weight, _bias(model.lm_head)), h


def train_hidden_shared(
    model: Any,
    input_ids: torch.Tensor,
    prompt_lens: list[int],
    prompts: list[list[int]],
    prompt_of: list[int],
    completions: list[list[int]],
    start: int = 0,
) -> torch.Tensor:
    """``train_hidden`` for rows that share prompts (GRPO's G completions of one prompt): each
    distinct prompt runs through the layers once, its keys and values serving all its rows.

    Token positions are laid out flat: U distinct prompts right-padded to Lp, then B
    completions right-padded to Lc. Norms, projections and MLPs run on the flat tokens; a
    prompt's queries attend causally within it; a completion's queries attend to its prompt's
    keys (valid positions) and causally to its own. The result is gathered back to the
    right-padded [B, L] layout of `input_ids`, so a prompt's gradient is the sum over its rows:
    the same values and gradients as ``train_forward`` (up to float rounding).
    `prompt_lens`: each row's prompt tokens; `prompts`/`prompt_of`/`completions` from
    ``shared_prompt_rows``; outputs for positions start… only, as ``train_forward``.
    """
    inner, cfg = model.model, model.config
    b, width = input_ids.shape
    dev = input_ids.device
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    u, lp = len(prompts), max(len(p) for p in prompts)
    lc = max(len(c) for c in completions)
    pad = prompts[0][0]  # any valid token id: padded positions are never read back
    flat = [t for p in prompts for t in p + [pad] * (lp - len(p))]
    flat += [t for c in completions for t in c + [pad] * (lc - len(c))]
    plen = torch.tensor(prompt_lens, device=dev)  # [B]
    of = torch.tensor(prompt_of, device=dev)  # [B]
    pos = torch.cat([torch.arange(lp, device=dev).repeat(u),
                     (plen[:, None] + torch.arange(lc, device=dev)).flatten()])  # fmt: skip
    cos, sin_rot = _rope_tables(model, torch.arange(int(pos.max()) + 1, device=dev))
    rope = _roper(cos[pos][:, None], sin_rot[pos][:, None])  # [N, 1, hd]
    n_p = u * lp
    # completion query i of row r sees its prompt's first plen[r] keys and its own keys <= i
    key = torch.arange(lp + lc, device=dev)
    seen = torch.where(key < lp, key[None, None] < plen[:, None, None],
                       (key - lp)[None, None] <= torch.arange(lc, device=dev)[None, :, None])  # fmt: skip
    bias = torch.zeros(seen.shape, dtype=inner.embed_tokens.weight.dtype, device=dev)
    bias = bias.masked_fill_(~seen, float("-inf"))[:, None]  # [B, 1, Lc, Lp+Lc]

    def attend(L: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        hd = L.hd

        def prompt_part(t: torch.Tensor, heads: int) -> torch.Tensor:
            return t[:n_p].reshape(u, lp, heads, hd).transpose(1, 2)

        def completion_part(t: torch.Tensor, heads: int) -> torch.Tensor:
            return t[n_p:].reshape(b, lc, heads, hd).transpose(1, 2)

        kp, vp = prompt_part(k, nkv), prompt_part(v, nkv)
        o_p = attention(prompt_part(q, nh), kp, vp, L.scale)  # [U, nh, Lp, hd]
        keys = torch.cat([kp[of], completion_part(k, nkv)], dim=2)  # [B, nkv, Lp+Lc, hd]
        values = torch.cat([vp[of], completion_part(v, nkv)], dim=2)
        o_c = attention(completion_part(q, nh), keys, values, L.scale, bias)  # [B, nh, Lc, hd]
        return torch.cat([o_p.transpose(1, 2).reshape(n_p, nh * hd),
                          o_c.transpose(1, 2).reshape(b * lc, nh * hd)])  # fmt: skip

    h = F.embedding(torch.tensor(flat, device=dev), inner.embed_tokens.weight)  # [N, H]
    for i, layer in enumerate(inner.layers):
        h = decoder_layer(_Layer(i, layer, cfg), h, train_norm, rope, attend)
    h = train_norm(h, inner.norm.weight, float(inner.norm.variance_epsilon))
    # back to [B, L−start]: prompt positions from the row's prompt, the rest from its completion
    t = torch.arange(start, width, device=dev)[None]
    at = torch.where(t < plen[:, None], of[:, None] * lp + t,
                     n_p + torch.arange(b, device=dev)[:, None] * lc
                     + (t - plen[:, None]).clamp(0, lc - 1))  # fmt: skip
    return h[at]  # [B, L−start, H]


class LeanDecoder:
    """KV-cached decoding of `batch` rows up to `max_len` positions (prompt + completion)."""

    def __init__(self, model: Any, batch: int, max_len: int) -> None:
        self.model = model
        cfg = model.config
        fuse = sum(t.numel() for t in model.parameters()) <= FUSE_MAX_PARAMS
        self.layers = [_Layer(i, layer, cfg, fuse) for i, layer in enumerate(model.model.layers)]
        self.fused = fuse
        L0 = self.layers[0]
        p = model.model.embed_tokens.weight
        shape = (batch, L0.nkv, max_len, L0.hd)
        self.k = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in self.layers]
        self.v = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in self.layers]
        self.len = 0
        # Additive key mask: −inf on padding (of prompts, of loaded caches), 0 elsewhere.
        self.neg = torch.zeros((batch, max_len), dtype=p.dtype, device=p.device)
        self.cos, self.sin_rot = _rope_tables(model, torch.arange(max_len, device=p.device))

    @classmethod
    def maybe(cls, model: Any, batch: int, max_len: int) -> LeanDecoder | None:
        """A decoder for `model`, or None when its architecture is not the plain one."""
        return cls(model, batch, max_len) if is_plain(model) else None

    def prefill(
        self, ids: torch.Tensor, valid: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """Fill the empty cache with the prompts `ids` [U, T] (valid: [U, T] bool, pos: [U, T])
        and return the logits of their last position, one row per cache row [B, V]. Cache row
        b holds prompt `rows[b]` ([B] indices into U): a prompt sampled n times is run once,
        its keys and values copied to its n rows."""
        if self.len:
            raise RuntimeError("prefill needs an empty cache")
        return self.extend(ids, valid, pos, rows)

    def load(self, cached: list[torch.Tensor | None]) -> None:
        """Fill the empty cache with each row's stored keys and values (``take``'s
        [layers, 2, nkv, n_b, hd], None: nothing), left-padded to the longest; padding is
        masked in ``neg``. The stored keys carry their RoPE already, so positions need not
        line up across rows."""
        if self.len:
            raise RuntimeError("load needs an empty cache")
        width = max((0 if c is None else c.shape[3]) for c in cached)
        self.neg[:, :width] = float("-inf")
        for kc, vc in zip(self.k, self.v, strict=True):  # masked padding must still be finite:
            kc[:, :, :width].zero_()  # softmax weight 0 times NaN garbage is NaN
            vc[:, :, :width].zero_()
        for b, c in enumerate(cached):
            if c is None or not c.shape[3]:
                continue
            lo = width - c.shape[3]
            for i in range(len(self.layers)):
                self.k[i][b, :, lo:width] = c[i, 0]
                self.v[i][b, :, lo:width] = c[i, 1]
            self.neg[b, lo:width] = 0.0
        self.len = width

    def extend(
        self,
        ids: torch.Tensor,
        valid: torch.Tensor,
        pos: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Append a block of W positions to every row (`ids`, `valid`, `pos`: [B, W]; each
        row's new tokens left-padded in the block, padding masked) and return the logits of
        the block's last position [B, V]. Queries attend to every valid cached position and
        causally within the block (a padding query to itself, so none is all-masked): a
        multi-turn trajectory's next turn runs only the tokens appended since the last.
        `rows` ([B] indices into the U rows of `ids`, empty cache only): ``prefill``."""
        u, w = ids.shape
        start, end = self.len, self.len + w
        if rows is not None and start:
            raise RuntimeError("rows need an empty cache")
        self.neg[:, start:end] = 0.0
        self.neg[:, start:end].masked_fill_(~(valid if rows is None else valid[rows]), float("-inf"))  # fmt: skip
        eye = torch.eye(w, dtype=torch.bool, device=ids.device)
        seen = (valid[:, None, :] & eye.cumsum(0).bool()) | eye  # [U, W, W]
        bias = torch.zeros(seen.shape, dtype=self.neg.dtype, device=ids.device)
        bias = bias.masked_fill_(~seen, float("-inf"))
        if start:
            bias = torch.cat([self.neg[:, None, :start].expand(u, w, start), bias], -1)
        bias = bias[:, None]  # [U, 1, W, end]

        def attend(L: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [U, heads, W, hd]
            kc, vc = self.k[L.index], self.v[L.index]  # [B, nkv, max_len, hd]
            kc[:, :, start:end] = k if rows is None else k[rows]
            vc[:, :, start:end] = v if rows is None else v[rows]
            if start:  # the rows' cached keys, then the block's
                k, v = kc[:, :, :end], vc[:, :, :end]
            return attention(q, k, v, L.scale, bias).transpose(1, 2).reshape(u, w, -1)

        rope = _roper(self.cos[pos][:, :, None], self.sin_rot[pos][:, :, None])  # [U, W, 1, hd]
        h = F.embedding(ids, self.model.model.embed_tokens.weight)  # [U, W, H]
        for L in self.layers:
            h = decoder_layer(L, h, rms_norm, rope, attend)
        self.len = end
        logits = _head(self.model, h[:, -1], rms_norm)
        return logits if rows is None else logits[rows]

    def take(self, row: int, cols: torch.Tensor) -> torch.Tensor:
        """Row `row`'s keys and values at cache positions `cols` [n] (its real tokens, in
        order), copied out as [layers, 2, nkv, n, hd] for ``load`` in a later call."""
        return torch.stack(
            [
                torch.stack((self.k[i][row][:, cols], self.v[i][row][:, cols]))
                for i in range(len(self.layers))
            ]
        )

    def step(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Decode: append one token per row (`ids`, `pos`: [B]); logits of it [B, V]."""
        b, end = ids.shape[0], self.len + 1
        neg = self.neg[:, None, None, :end]  # [B, 1, 1, end]

        def attend(L: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            kc, vc = self.k[L.index], self.v[L.index]  # [B, nkv, max_len, hd]
            kc[:, :, end - 1] = k
            vc[:, :, end - 1] = v
            o = attention(q[:, :, None], kc[:, :, :end], vc[:, :, :end], L.scale, neg)
            return o.view(b, L.nh * L.hd)  # from [B, nh, 1, hd]

        rope = _roper(self.cos[pos][:, None], self.sin_rot[pos][:, None])  # [B, 1, hd]
        h = F.embedding(ids, self.model.model.embed_tokens.weight)  # [B, H]
        for L in self.layers:
            h = decoder_layer(L, h, rms_norm, rope, attend)
        self.len = end
        return _head(self.model, h, rms_norm)
