"""A lean KV-cached forward for Qwen2/Llama-style decoders, used by the HF rollout engine.

For models of a few million parameters, transformers' forward spends most of each decode step in
Python (module calls, mask building, cache classes, output wrappers), not in matrix products.
This module runs the same computation straight from the model's own parameters (its Linear,
RMSNorm and embedding weights, its rotary frequencies), with no ``nn.Module`` call per step:

- a preallocated K/V buffer per layer, written in place;
- RoPE cos/sin looked up in a table computed once per decoder with the model's own rotary
  module (the same values it computes per step: cos(pos·θ_i) is elementwise in pos);
- RMSNorm as one fused ``F.rms_norm`` (Zhang & Sennrich 2019: x / √(mean x² + ε) · w);
- prefill: each distinct prompt once (its n samples share its keys and values), one
  ``scaled_dot_product_attention`` per layer with a causal + padding mask;
  decode (one query per row): softmax(q·Kᵀ·s + mask)·V as two batched matmuls over the valid
  prefix, grouped-query heads sharing their K/V without copying them;
- models up to ``FUSE_MAX_PARAMS``: q|k|v and gate|up as one matmul each on transposed weight
  copies, the step as one function (``_decode_step``) run through TorchScript.

``train_forward`` is the same computation over whole right-padded sequences with autograd
(RMSNorm with a closed-form backward, explicit short-sequence attention on CPU), for the
trainer's ``forward_logits``; ``train_forward_shared`` runs a prompt shared by several rows (a
GRPO group) once.

Supported: plain (non-peft) ``Qwen2ForCausalLM``/``LlamaForCausalLM`` with full attention
everywhere, silu MLPs and position-independent RoPE scaling. Anything else returns None from
``FastDecoder.maybe`` (``is_plain`` False) and callers fall back to the model's own forward.
tests/test_rollout_hf.py checks the sampled logprobs and tests/test_lean_forward.py the
training logits and gradients against transformers' forward.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

SUPPORTED = ("Qwen2ForCausalLM", "LlamaForCausalLM")


def _bias(linear: Any) -> torch.Tensor | None:
    b: torch.Tensor | None = linear.bias
    return b


class _Layer:
    """One decoder layer's parameters (the model's own tensors, not copies)."""

    def __init__(self, layer: Any) -> None:
        att, mlp = layer.self_attn, layer.mlp
        self.ln1, self.ln2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        self.eps1 = float(layer.input_layernorm.variance_epsilon)
        self.eps2 = float(layer.post_attention_layernorm.variance_epsilon)
        self.q, self.qb = att.q_proj.weight, _bias(att.q_proj)
        self.k, self.kb = att.k_proj.weight, _bias(att.k_proj)
        self.v, self.vb = att.v_proj.weight, _bias(att.v_proj)
        self.o, self.ob = att.o_proj.weight, _bias(att.o_proj)
        self.gate, self.gb = mlp.gate_proj.weight, _bias(mlp.gate_proj)
        self.up, self.ub = mlp.up_proj.weight, _bias(mlp.up_proj)
        self.down, self.db = mlp.down_proj.weight, _bias(mlp.down_proj)
        self.scale = float(att.scaling)


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2/Llama RMSNorm: normalise in float32, cast back, then scale by w."""
    if x.dtype == torch.float32 and w.dtype == torch.float32:
        return F.rms_norm(x, w.shape, w, eps)
    return w * F.rms_norm(x.float(), w.shape, None, eps).to(x.dtype)


def _residual_linear(h: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: Any) -> torch.Tensor:
    """h + x·wᵀ (+ b), as one addmm when there is no bias (x, h: [N, in], [N, out])."""
    if b is None and h.dim() == 2:
        return torch.addmm(h, x, w.t())
    return h + F.linear(x, w, b)


# Models up to this many parameters decode with fused, transposed weight copies (`_Fused`).
FUSE_MAX_PARAMS = 2**27


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if any(t is None for t in parts) else torch.cat(parts)  # type: ignore[arg-type]


class _Fused:
    """A layer's decode weights as contiguous [in, out] copies: q|k|v and gate|up side by side
    (biases likewise; a bias on one part but not another keeps the parts unfused)."""

    def __init__(self, L: _Layer) -> None:
        self.qkv = torch.cat((L.q, L.k, L.v)).t().contiguous()
        self.qkv_b = _cat([L.qb, L.kb, L.vb])
        if self.qkv_b is None and not (L.qb is None and L.kb is None and L.vb is None):
            raise _Unfusable
        self.gate_up = torch.cat((L.gate, L.up)).t().contiguous()
        self.gate_up_b = _cat([L.gb, L.ub])
        if self.gate_up_b is None and not (L.gb is None and L.ub is None):
            raise _Unfusable
        self.inter = L.gate.shape[0]
        self.o, self.down = L.o.t().contiguous(), L.down.t().contiguous()


class _Unfusable(Exception):
    pass


class FastDecoder:
    def __init__(self, model: Any, batch: int, max_len: int) -> None:
        self.model = model
        inner = model.model
        cfg = model.config
        self.layers = [_Layer(layer) for layer in inner.layers]
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.embed = inner.embed_tokens.weight
        self.norm, self.norm_eps = inner.norm.weight, float(inner.norm.variance_epsilon)
        self.lm_head, self.lm_bias = model.lm_head.weight, _bias(model.lm_head)
        p = self.embed
        shape = (batch, self.n_kv, max_len, self.head_dim)
        self.k = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in self.layers]
        self.v = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in self.layers]
        self.len = 0
        self.valid = torch.zeros((batch, max_len), dtype=torch.bool, device=p.device)
        # Additive key mask for decode steps: −inf on prompt padding, 0 elsewhere.
        self.neg = torch.zeros((batch, max_len), dtype=p.dtype, device=p.device)
        positions = torch.arange(max_len, device=p.device)[None]
        cos, sin = inner.rotary_emb(p[:1], positions)  # [1, max_len, hd]
        self.cos, self.sin = cos[0], sin[0]  # [max_len, hd]
        # rotate_half(x)·sin = roll(x, hd/2)·[−sin₁, sin₂]: one roll instead of chunk/neg/cat.
        half = self.head_dim // 2
        self.sin_rot = torch.cat((-self.sin[:, :half], self.sin[:, half:]), dim=-1)
        # Decode steps are small matmuls; one [H, (nh+2·nkv)·hd] product for q, k, v and one
        # [H, 2·I] for gate and up, with transposed contiguous weights, take ~6% less time
        # per step than seven separate ones. The copies cost the linear weights' memory
        # once more, so only models up to FUSE_MAX_PARAMS get them; their step is
        # ``_decode_step`` on these operands (``plan``), built once per decoder.
        self.plan: tuple[Any, ...] | None = None
        if sum(t.numel() for t in model.parameters()) <= FUSE_MAX_PARAMS:
            try:
                fused = [_Fused(L) for L in self.layers]
            except _Unfusable:
                fused = []
            if fused:
                weights = [t for L, Fu in zip(self.layers, fused, strict=True)
                           for t in (L.ln1, Fu.qkv, Fu.o, L.ln2, Fu.gate_up, Fu.down)]  # fmt: skip
                biases = [t for L, Fu in zip(self.layers, fused, strict=True)
                          for t in (Fu.qkv_b, L.ob, Fu.gate_up_b, L.db)]  # fmt: skip
                self.plan = (self.embed, self.cos, self.sin_rot, self.neg, self.k, self.v,
                             weights, biases, [e for L in self.layers for e in (L.eps1, L.eps2)],
                             [L.scale for L in self.layers], self.norm, self.norm_eps,
                             self.lm_head, self.lm_bias, self.n_heads, self.n_kv, self.head_dim,
                             fused[0].inter)  # fmt: skip

    @classmethod
    def maybe(cls, model: Any, batch: int, max_len: int) -> FastDecoder | None:
        """A decoder for `model`, or None when its architecture is not the plain one."""
        return cls(model, batch, max_len) if is_plain(model) else None

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin_rot: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(x * cos, x.roll(self.head_dim // 2, -1), sin_rot)

    def prefill(
        self, ids: torch.Tensor, valid: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """Fill the empty cache with the prompts `ids` [U, T] (valid: [U, T] bool, pos: [U, T])
        and return the logits of their last position, one row per cache row [B, V]. Cache row
        b holds prompt `rows[b]` ([B] indices into U): a prompt sampled n times is run once,
        its keys and values copied to its n rows."""
        if self.len:
            raise RuntimeError("prefill needs an empty cache")
        u, t = ids.shape
        self.valid[:, :t] = valid[rows]
        self.neg[:, :t].masked_fill_(~self.valid[:, :t], float("-inf"))
        h = F.embedding(ids, self.embed)  # [U, T, H]
        cos, sin_rot = self.cos[pos][:, None], self.sin_rot[pos][:, None]  # [U, 1, T, hd]
        # causal, and a padding query attends to itself (never all-masked)
        eye = torch.eye(t, dtype=torch.bool, device=ids.device)
        mask = (valid[:, None, None, :] & eye.cumsum(0).bool()) | eye  # [U, 1, T, T]
        hd, nh, nkv = self.head_dim, self.n_heads, self.n_kv
        for i, L in enumerate(self.layers):
            x = _rms_norm(h, L.ln1, L.eps1)
            q = F.linear(x, L.q, L.qb).view(u, t, nh, hd).transpose(1, 2)
            k = F.linear(x, L.k, L.kb).view(u, t, nkv, hd).transpose(1, 2)
            v = F.linear(x, L.v, L.vb).view(u, t, nkv, hd).transpose(1, 2)
            q, k = self._rope(q, cos, sin_rot), self._rope(k, cos, sin_rot)
            self.k[i][:, :, :t] = k[rows]
            self.v[i][:, :, :t] = v[rows]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=L.scale,
                                               enable_gqa=nkv != nh)  # fmt: skip
            h = h + F.linear(o.transpose(1, 2).reshape(u, t, -1), L.o, L.ob)
            x = _rms_norm(h, L.ln2, L.eps2)
            act = F.silu(F.linear(x, L.gate, L.gb)) * F.linear(x, L.up, L.ub)
            h = h + F.linear(act, L.down, L.db)
        self.len = t
        last = _rms_norm(h[:, -1], self.norm, self.norm_eps)
        return F.linear(last, self.lm_head, self.lm_bias)[rows]

    def step(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Decode: append one token per row (`ids`, `pos`: [B]); logits of it [B, V]."""
        if self.plan is not None:
            return self._step_fused(ids, pos, self.plan)
        b = ids.shape[0]
        end = self.len + 1
        hd, nh, nkv = self.head_dim, self.n_heads, self.n_kv
        g = nh // nkv
        h = F.embedding(ids, self.embed)  # [B, H]
        cos, sin_rot = self.cos[pos][:, None], self.sin_rot[pos][:, None]  # [B, 1, hd]
        neg = self.neg[:, None, None, :end]  # [B, 1, 1, end]
        for i, L in enumerate(self.layers):
            x = _rms_norm(h, L.ln1, L.eps1)
            q = self._rope(F.linear(x, L.q, L.qb).view(b, nh, hd), cos, sin_rot)
            self.k[i][:, :, end - 1] = self._rope(F.linear(x, L.k, L.kb).view(b, nkv, hd),
                                                  cos, sin_rot)  # fmt: skip
            self.v[i][:, :, end - 1] = F.linear(x, L.v, L.vb).view(b, nkv, hd)
            keys, values = self.k[i][:, :, :end], self.v[i][:, :, :end]  # [B, nkv, end, hd]
            # query heads kv·g … kv·g+g−1 share K/V head kv (transformers' repeat_kv order)
            s = torch.matmul(q.view(b, nkv, g, hd), keys.transpose(-1, -2))  # [B, nkv, g, end]
            p = torch.add(neg, s, alpha=L.scale).softmax(-1)
            o = torch.matmul(p, values).view(b, nh * hd)  # [B, nkv, g, hd] -> [B, nh·hd]
            h = _residual_linear(h, o, L.o, L.ob)
            x = _rms_norm(h, L.ln2, L.eps2)
            act = F.silu(F.linear(x, L.gate, L.gb)).mul_(F.linear(x, L.up, L.ub))
            h = _residual_linear(h, act, L.down, L.db)
        self.len = end
        logits: torch.Tensor = F.linear(_rms_norm(h, self.norm, self.norm_eps), self.lm_head,
                                        self.lm_bias)  # fmt: skip
        return logits

    def _step_fused(
        self, ids: torch.Tensor, pos: torch.Tensor, plan: tuple[Any, ...]
    ) -> torch.Tensor:
        """``step`` for models with fused weights: ``_decode_step``, TorchScript-compiled when
        available."""
        self.len += 1
        logits: torch.Tensor = _decode_fn()(ids, pos, self.len, *plan)
        return logits


def is_plain(model: Any) -> bool:
    """True for an unwrapped Qwen2/Llama causal LM this module computes exactly (not peft,
    DDP, FSDP or offloaded; full attention; silu MLP; RoPE independent of sequence length)."""
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


class _RMSNorm(torch.autograd.Function):
    """y = w · x̂, x̂ = x / √(mean x² + ε) (Zhang & Sennrich 2019), in float32 like the model's
    RMSNorm, with the closed-form backward ∂x = (g·w − x̂·mean(g·w·x̂)) / √(mean x² + ε),
    ∂w = Σ g·x̂: two saved tensors and ~5 elementwise passes instead of autograd's ~12."""

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


# Score matrices up to this many elements per layer (64 MiB in float32) are formed explicitly.
EXPLICIT_ATTENTION_ELEMENTS = 2**24


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> Any:
    """softmax(q·kᵀ·scale + causal)·v for q [B, nh, L, hd], k/v [B, nkv, L, hd].

    On CPU with short sequences, as three batched GEMMs over the explicit score matrix: the
    query heads sharing a K/V head are stacked along rows (no K/V copies), and the CPU flash
    kernel, tiled for long sequences, takes about twice as long forward and backward at
    L < 100. Long sequences and GPUs use ``scaled_dot_product_attention`` (memory O(L))."""
    b, nh, t, hd = q.shape
    nkv = k.shape[1]
    if q.device.type != "cpu" or b * nh * t * t > EXPLICIT_ATTENTION_ELEMENTS:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                              enable_gqa=nkv != nh)  # fmt: skip
    g = nh // nkv
    causal = torch.full((t, t), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
    s = torch.baddbmm(causal.repeat(g, 1).expand(b * nkv, g * t, t),
                      q.reshape(b * nkv, g * t, hd), k.reshape(b * nkv, t, hd).transpose(1, 2),
                      alpha=scale)  # fmt: skip  # [B·nkv, g·L, L]
    return torch.bmm(s.softmax(-1), v.reshape(b * nkv, t, hd)).view(b, nh, t, hd)


def train_forward(
    model: Any, input_ids: torch.Tensor, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, L−start, V], last hidden state [B, L−start, H]) of positions start… of the
    right-padded `input_ids` [B, L], with autograd: the model's own forward (same parameters,
    same operations up to float rounding) without its per-module Python, mask building and
    output wrappers, RMSNorm with a closed-form backward and RoPE as one roll. Right padding
    needs no mask beyond the causal one: a real token never attends to a later (padding)
    position. `model` must pass ``is_plain``; dropout is not applied (call it only when
    attention dropout is 0)."""
    inner, cfg = model.model, model.config
    b, t = input_ids.shape
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    positions = torch.arange(t, device=input_ids.device)[None]
    cos, sin = inner.rotary_emb(inner.embed_tokens.weight[:1], positions)  # [1, L, hd]
    cos = cos[:, None]  # [1, 1, L, hd]
    sin_rot = torch.cat((-sin[..., : hd // 2], sin[..., hd // 2 :]), dim=-1)[:, None]
    h = F.embedding(input_ids, inner.embed_tokens.weight)  # [B, L, H]
    for layer in inner.layers:
        L = _Layer(layer)
        x = _RMSNorm.apply(h, L.ln1, L.eps1)
        q = F.linear(x, L.q, L.qb).view(b, t, nh, hd).transpose(1, 2)
        k = F.linear(x, L.k, L.kb).view(b, t, nkv, hd).transpose(1, 2)
        v = F.linear(x, L.v, L.vb).view(b, t, nkv, hd).transpose(1, 2)
        q = q * cos + q.roll(hd // 2, -1) * sin_rot
        k = k * cos + k.roll(hd // 2, -1) * sin_rot
        o = _causal_attention(q, k, v, L.scale)  # [B, nh, L, hd]
        h = h + F.linear(o.transpose(1, 2).reshape(b, t, -1), L.o, L.ob)
        x = _RMSNorm.apply(h, L.ln2, L.eps2)
        h = h + F.linear(F.silu(F.linear(x, L.gate, L.gb)) * F.linear(x, L.up, L.ub),
                         L.down, L.db)  # fmt: skip
    h = _RMSNorm.apply(h[:, start:], inner.norm.weight, float(inner.norm.variance_epsilon))
    return F.linear(h, model.lm_head.weight, _bias(model.lm_head)), h


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
    """``train_forward`` for rows that share prompts (GRPO's G completions of one prompt): each
    distinct prompt runs through the layers once, its keys and values serving all its rows.

    Token positions are laid out flat: U distinct prompts right-padded to Lp, then B
    completions right-padded to Lc. Norms, projections and MLPs run on the flat tokens; a
    prompt's queries attend causally within it; a completion's queries attend to its prompt's
    keys (valid positions) and causally to its own. The result is gathered back to the
    right-padded [B, L] layout of `input_ids`, a row's prompt positions reading its prompt's
    states, so a prompt's gradient is the sum over its rows: the same values and gradients as
    ``train_forward`` (up to float rounding) for `G·Lp − Lp` fewer positions per group.
    `prompt_lens`: each row's prompt tokens; `prompts`/`prompt_of`/`completions` from
    ``shared_prompt_rows``; outputs for positions start… only, as ``train_forward``.
    """
    inner, cfg = model.model, model.config
    b, width = input_ids.shape
    dev = input_ids.device
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    g = nh // nkv
    u, lp = len(prompts), max(len(p) for p in prompts)
    lc = max(len(c) for c in completions)
    pad = prompts[0][0]  # any valid token id: padded positions are never read back
    flat = [t for p in prompts for t in p + [pad] * (lp - len(p))]
    flat += [t for c in completions for t in c + [pad] * (lc - len(c))]
    plen = torch.tensor(prompt_lens, device=dev)  # [B]
    of = torch.tensor(prompt_of, device=dev)  # [B]
    pos = torch.cat([torch.arange(lp, device=dev).repeat(u),
                     (plen[:, None] + torch.arange(lc, device=dev)).flatten()])  # fmt: skip
    table = torch.arange(int(pos.max()) + 1, device=dev)[None]
    cos, sin = inner.rotary_emb(inner.embed_tokens.weight[:1], table)  # [1, P, hd]
    sin_rot = torch.cat((-sin[0, :, : hd // 2], sin[0, :, hd // 2 :]), dim=-1)
    cos_t, sin_t = cos[0][pos][:, None], sin_rot[pos][:, None]  # [N, 1, hd]
    n_p = u * lp
    # completion query i of row r sees its prompt's first plen[r] keys and its own keys <= i
    key = torch.arange(lp + lc, device=dev)
    seen = torch.where(key < lp, key[None, None] < plen[:, None, None],
                       (key - lp)[None, None] <= torch.arange(lc, device=dev)[None, :, None])  # fmt: skip
    explicit = dev.type == "cpu" and b * nh * lc * (lp + lc) <= EXPLICIT_ATTENTION_ELEMENTS
    if explicit:  # additive bias, query heads sharing a K/V head stacked along rows
        bias = torch.zeros(seen.shape, dtype=inner.embed_tokens.weight.dtype, device=dev)
        bias = bias.masked_fill_(~seen, float("-inf"))[:, None, None]
        bias = bias.expand(b, nkv, g, lc, lp + lc).reshape(b * nkv, g * lc, lp + lc)
    h = F.embedding(torch.tensor(flat, device=dev), inner.embed_tokens.weight)  # [N, H]
    for layer in inner.layers:
        L = _Layer(layer)
        x = _RMSNorm.apply(h, L.ln1, L.eps1)
        q = F.linear(x, L.q, L.qb).view(-1, nh, hd)
        k = F.linear(x, L.k, L.kb).view(-1, nkv, hd)
        v = F.linear(x, L.v, L.vb).view(-1, nkv, hd)
        q = q * cos_t + q.roll(hd // 2, -1) * sin_t
        k = k * cos_t + k.roll(hd // 2, -1) * sin_t

        def prompt_part(t: torch.Tensor, heads: int) -> torch.Tensor:
            return t[:n_p].view(u, lp, heads, hd).transpose(1, 2)

        def completion_part(t: torch.Tensor, heads: int) -> torch.Tensor:
            return t[n_p:].view(b, lc, heads, hd).transpose(1, 2)

        kp, vp = prompt_part(k, nkv), prompt_part(v, nkv)
        o_p = _causal_attention(prompt_part(q, nh), kp, vp, L.scale)  # [U, nh, Lp, hd]
        keys = torch.cat([kp[of], completion_part(k, nkv)], dim=2)  # [B, nkv, Lp+Lc, hd]
        values = torch.cat([vp[of], completion_part(v, nkv)], dim=2)
        qc = completion_part(q, nh)  # [B, nh, Lc, hd]
        if explicit:
            s = torch.baddbmm(bias, qc.reshape(b * nkv, g * lc, hd),
                              keys.reshape(b * nkv, lp + lc, hd).transpose(1, 2),
                              alpha=L.scale)  # fmt: skip
            o_c = torch.bmm(s.softmax(-1), values.reshape(b * nkv, lp + lc, hd))
            o_c = o_c.view(b, nh, lc, hd)
        else:
            o_c = F.scaled_dot_product_attention(qc, keys, values, attn_mask=seen[:, None],
                                                 scale=L.scale, enable_gqa=nkv != nh)  # fmt: skip
        o = torch.cat([o_p.transpose(1, 2).reshape(n_p, nh * hd),
                       o_c.transpose(1, 2).reshape(b * lc, nh * hd)])  # fmt: skip
        h = h + F.linear(o, L.o, L.ob)
        x = _RMSNorm.apply(h, L.ln2, L.eps2)
        h = h + F.linear(F.silu(F.linear(x, L.gate, L.gb)) * F.linear(x, L.up, L.ub),
                         L.down, L.db)  # fmt: skip
    h = _RMSNorm.apply(h, inner.norm.weight, float(inner.norm.variance_epsilon))
    # back to [B, L−start]: prompt positions from the row's prompt, the rest from its completion
    t = torch.arange(start, width, device=dev)[None]
    at = torch.where(t < plen[:, None], of[:, None] * lp + t,
                     n_p + torch.arange(b, device=dev)[:, None] * lc
                     + (t - plen[:, None]).clamp(0, lc - 1))  # fmt: skip
    h = h[at]  # [B, L−start, H]
    return F.linear(h, model.lm_head.weight, _bias(model.lm_head)), h


def _rms(x: torch.Tensor, width: list[int], w: torch.Tensor, eps: float) -> torch.Tensor:
    """``_rms_norm`` for ``_decode_step`` (TorchScript-compatible)."""
    if x.dtype == torch.float32 and w.dtype == torch.float32:
        return torch.rms_norm(x, width, w, eps)
    return w * torch.rms_norm(x.float(), width, None, eps).to(x.dtype)


def _decode_step(
    ids: torch.Tensor,
    pos: torch.Tensor,
    end: int,
    embed: torch.Tensor,
    cos_t: torch.Tensor,
    sin_rot_t: torch.Tensor,
    neg_all: torch.Tensor,
    k_cache: list[torch.Tensor],
    v_cache: list[torch.Tensor],
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    eps: list[float],
    scales: list[float],
    norm: torch.Tensor,
    norm_eps: float,
    head: torch.Tensor,
    head_b: torch.Tensor | None,
    nh: int,
    nkv: int,
    hd: int,
    inter: int,
) -> torch.Tensor:
    """One decode step of ``FastDecoder`` on fused weights (the general ``step``'s
    operations in the same order): append token `ids` [B] at positions `pos` [B] as cache slot
    `end` − 1 and return its logits [B, V]. Per layer, `weights` holds (ln1, qkv [H, ·], o
    [·, H], ln2, gate|up [H, 2I], down [I, H]) and `biases` (qkv, o, gate|up, down) or None.
    Written for TorchScript (``_decode_fn``), and plain Python when it is unavailable."""
    b = ids.shape[0]
    g, half = nh // nkv, hd // 2
    width = [embed.shape[1]]
    h = torch.embedding(embed, ids)  # [B, H]
    cos = cos_t.index_select(0, pos).unsqueeze(1)  # [B, 1, hd]
    sin_rot = sin_rot_t.index_select(0, pos).unsqueeze(1)
    neg = neg_all.narrow(1, 0, end).view(b, 1, 1, end)
    for i in range(len(k_cache)):
        kc, vc = k_cache[i], v_cache[i]
        qkv_b, o_b, gu_b, d_b = (
            biases[4 * i],
            biases[4 * i + 1],
            biases[4 * i + 2],
            biases[4 * i + 3],
        )
        x = _rms(h, width, weights[6 * i], eps[2 * i])
        if qkv_b is None:
            qkv = torch.mm(x, weights[6 * i + 1])
        else:
            qkv = torch.addmm(qkv_b, x, weights[6 * i + 1])
        qkv = qkv.view(b, nh + 2 * nkv, hd)
        qk = qkv.narrow(1, 0, nh + nkv)
        qk = torch.addcmul(qk * cos, qk.roll(half, -1), sin_rot)  # RoPE on q and k heads at once
        kc.select(2, end - 1).copy_(qk.narrow(1, nh, nkv))
        vc.select(2, end - 1).copy_(qkv.narrow(1, nh + nkv, nkv))
        # query heads kv·g … kv·g+g−1 share K/V head kv (transformers' repeat_kv order)
        s = torch.matmul(qk.narrow(1, 0, nh).reshape(b, nkv, g, hd),
                         kc.narrow(2, 0, end).transpose(-1, -2))  # fmt: skip
        p = torch.add(neg, s, alpha=scales[i]).softmax(-1)
        o = torch.matmul(p, vc.narrow(2, 0, end)).view(b, nh * hd)
        if o_b is None:
            h = torch.addmm(h, o, weights[6 * i + 2])
        else:
            h = h + torch.addmm(o_b, o, weights[6 * i + 2])
        x = _rms(h, width, weights[6 * i + 3], eps[2 * i + 1])
        if gu_b is None:
            gu = torch.mm(x, weights[6 * i + 4])
        else:
            gu = torch.addmm(gu_b, x, weights[6 * i + 4])
        act = F.silu(gu.narrow(1, 0, inter)).mul_(gu.narrow(1, inter, inter))
        if d_b is None:
            h = torch.addmm(h, act, weights[6 * i + 5])
        else:
            h = h + torch.addmm(d_b, act, weights[6 * i + 5])
    return F.linear(_rms(h, width, norm, norm_eps), head, head_b)


# TorchScript for ``_decode_step``: a tiny model's decode step is mostly per-operation Python
# dispatch, which the TorchScript interpreter cuts by ~15% (~10% of a benchmark generation).
# torch.jit is deprecated in favour of torch.compile, but here torch.compile needed 32 s to
# compile the step, 17 s more for each new cache length, and ran it slower; if scripting is
# unavailable or fails, the same function runs as plain Python. Tests may set this False.
SCRIPT_DECODE = True
_SCRIPTED: list[Any] = []


def _decode_fn() -> Any:
    if not SCRIPT_DECODE:
        return _decode_step
    if not _SCRIPTED:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                _SCRIPTED.append(torch.jit.script(_decode_step))
        except Exception:
            _SCRIPTED.append(_decode_step)
    return _SCRIPTED[0]
