"""Log-probabilities of chosen tokens and entropies from logits, without a [B, T, V] float32 copy.

The obvious ``log_softmax(logits.float()).gather(...)`` materialises the float32 upcast *and* the
log-softmax, each B·T·V floats, and autograd keeps the log-softmax for the backward pass: with a
150k vocabulary, 8 × 1024 tokens is 4.9 GB per copy. Here the forward pass works on blocks of
``chunk_tokens`` positions and keeps only the per-position log-normaliser; the backward pass
recomputes the softmax block by block, ∂ log p(tok)/∂z_v = (1[v = tok] − p_v) / temperature, and returns the
gradient in the logits' own dtype. Both log-prob and entropy are computed in (at least) float32:
bf16 carries ~3 significant digits, too few for a log-normaliser over 10⁵ terms.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.autograd.function import once_differentiable


def _blocks(b: int, t: int, chunk_tokens: int) -> Iterator[tuple[slice, slice]]:
    """(rows, positions) blocks of at most ``chunk_tokens`` positions covering [b, t]: several
    whole rows when rows are short, parts of one row when a row alone is longer."""
    rows = max(1, chunk_tokens // max(t, 1))
    width = max(1, min(t, chunk_tokens))
    for i in range(0, b, rows):
        for j in range(0, t, width):
            yield slice(i, i + rows), slice(j, j + width)


# Floats per block when chunk_tokens is not given: 2^25 × 4 bytes = 128 MiB per float32
# temporary, i.e. 220 positions of a 152k vocabulary or 1024 of a 32k one. Blocks that size
# still saturate a GPU; the limit matters for memory, not speed.
BLOCK_ELEMENTS = 2**25


def _chunk(chunk_tokens: int | None, vocab: int) -> int:
    if chunk_tokens is None:
        return max(1, BLOCK_ELEMENTS // max(vocab, 1))
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    return chunk_tokens


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    # float32 for fp16/bf16/fp32 logits; float64 stays float64 (gradcheck).
    return torch.promote_types(logits.dtype, torch.float32)


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(z / τ)[tok] with a chunked, recomputing backward (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: torch.Tensor,
        tokens: torch.Tensor,
        chunk_tokens: int,
        temperature: float,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = _compute_dtype(logits)
        out = torch.empty(tokens.shape, dtype=dtype, device=logits.device)  # [B, T]
        lse = torch.empty_like(out)  # [B, T] log Σ_v exp(z_v / τ)
        ent = torch.empty_like(out) if with_entropy else out.new_empty(0)  # [B, T]
        for r, c in _blocks(tokens.shape[0], tokens.shape[1], chunk_tokens):
            z = logits[r, c].to(dtype)  # [b, t, V] one block, upcast
            if temperature != 1.0:
                z = z / temperature
            lse[r, c] = torch.logsumexp(z, dim=-1)
            out[r, c] = z.gather(-1, tokens[r, c].unsqueeze(-1)).squeeze(-1) - lse[r, c]
            if with_entropy:  # H = lse − Σ_v p_v z_v while the block is at hand
                p = (z - lse[r, c].unsqueeze(-1)).exp_()
                ent[r, c] = lse[r, c] - (p * z).sum(-1)
        ctx.save_for_backward(logits, tokens, lse)
        ctx.chunk_tokens, ctx.temperature = chunk_tokens, temperature
        ctx.mark_non_differentiable(ent)
        return out, ent

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: torch.Tensor, _grad_entropy: Any
    ) -> tuple[Any, ...]:
        logits, tokens, lse = ctx.saved_tensors
        tau = ctx.temperature
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # [B, T, V]
        for r, c in _blocks(tokens.shape[0], tokens.shape[1], ctx.chunk_tokens):
            z = logits[r, c].to(lse.dtype)  # [b, t, V]
            if tau != 1.0:
                z = z / tau
            g_out = grad_out[r, c].unsqueeze(-1).to(lse.dtype)  # [b, t, 1]
            g = (z - lse[r, c].unsqueeze(-1)).exp_().mul_(-g_out)  # −p_v · g
            g.scatter_add_(-1, tokens[r, c].unsqueeze(-1), g_out)  # + 1[v = tok] · g
            grad[r, c] = g.div_(tau)
        return grad, None, None, None, None


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    chunk_tokens: int | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log π(tokens[b, t]) = z_tok/τ − logsumexp_v z_v/τ.  logits [B, T, V], tokens [B, T] -> [B, T].

    float32 result (float64 for float64 logits) whatever the logits' dtype; ``temperature`` τ
    scores tokens under the distribution the sampler drew them from. Peak extra memory is about
    2·chunk_tokens·V floats in forward and backward (default: ``BLOCK_ELEMENTS // V``
    positions per block); autograd keeps only [B, T] floats besides
    the logits themselves. Every token must be a valid id (no −100): mask the result instead.

    >>> token_logprobs(torch.zeros(1, 1, 4), torch.tensor([[2]])).tolist()  # log(1/4)
    [[-1.386...]]
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    chunk = _chunk(chunk_tokens, logits.shape[-1])
    out: torch.Tensor = _TokenLogprobs.apply(logits, tokens, chunk, temperature, False)[0]
    return out


def token_logprobs_and_entropy(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    chunk_tokens: int | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logprobs`` and, from the same pass over the logits, the entropy of each
    position's distribution softmax(z/τ), H = logsumexp(z/τ) − Σ_v p_v z_v/τ ([B, T], no grad).

    Equals ``(token_logprobs(...), entropy_from_logits(logits.detach() / τ))`` without the
    second read of the [B, T, V] logits and the second logsumexp; gradients flow through the
    log-probs only.

    >>> lp, h = token_logprobs_and_entropy(torch.zeros(1, 1, 4), torch.tensor([[2]]))
    >>> lp.tolist(), h.tolist()  # uniform over 4: log(1/4), log 4
    ([[-1.386...]], [[1.386...]])
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    chunk = _chunk(chunk_tokens, logits.shape[-1])
    out, ent = _TokenLogprobs.apply(logits, tokens, chunk, temperature, True)
    return out, ent


def entropy_from_logits(logits: torch.Tensor, *, chunk_tokens: int | None = None) -> torch.Tensor:
    """H = −Σ_v p_v log p_v = logsumexp(z) − Σ_v p_v z_v per position. [B, T, V] -> [B, T].

    At least float32, in blocks of ``chunk_tokens`` positions (default as ``token_logprobs``). Meant for metrics: call it on
    ``logits.detach()`` (with grad, autograd keeps each block's softmax).

    >>> entropy_from_logits(torch.zeros(1, 1, 4)).tolist()  # uniform: log 4
    [[1.386...]]
    """
    dtype = _compute_dtype(logits)
    out = torch.empty(logits.shape[:-1], dtype=dtype, device=logits.device)  # [B, T]
    for r, c in _blocks(out.shape[0], out.shape[1], _chunk(chunk_tokens, logits.shape[-1])):
        z = logits[r, c].to(dtype)  # [b, t, V]
        p = torch.softmax(z, dim=-1)
        out[r, c] = torch.logsumexp(z, dim=-1) - (p * z).sum(-1)
    return out


class _HeadTokenLogprobs(torch.autograd.Function):
    """log softmax((h·Wᵀ + b) / τ)[tok] from the last hidden state, never holding the
    [B, T, V] logits: each block of positions is projected, scored and dropped; the backward
    pass projects it again (one more head matmul) and accumulates ∂h = g_z·W, ∂W = g_zᵀ·h,
    ∂b = Σ g_z with g_z = (1[v = tok] − p_v)·g/τ. The liger-kernel "fused linear cross-entropy"
    idea, in plain torch."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        tokens: torch.Tensor,
        chunk_tokens: int,
        temperature: float,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = _compute_dtype(h)
        out = torch.empty(tokens.shape, dtype=dtype, device=h.device)  # [B, T]
        lse = torch.empty_like(out)
        ent = torch.empty_like(out) if with_entropy else out.new_empty(0)
        for r, c in _blocks(tokens.shape[0], tokens.shape[1], chunk_tokens):
            z = torch.nn.functional.linear(h[r, c], weight, bias).to(dtype)  # [b, t, V]
            if temperature != 1.0:
                z = z / temperature
            lse[r, c] = torch.logsumexp(z, dim=-1)
            out[r, c] = z.gather(-1, tokens[r, c].unsqueeze(-1)).squeeze(-1) - lse[r, c]
            if with_entropy:
                p = (z - lse[r, c].unsqueeze(-1)).exp_()
                ent[r, c] = lse[r, c] - (p * z).sum(-1)
        ctx.save_for_backward(h, weight, bias, tokens, lse)
        ctx.chunk_tokens, ctx.temperature = chunk_tokens, temperature
        ctx.mark_non_differentiable(ent)
        return out, ent

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: torch.Tensor, _grad_entropy: Any
    ) -> tuple[Any, ...]:
        h, weight, bias, tokens, lse = ctx.saved_tensors
        tau = ctx.temperature
        grad_h = torch.zeros_like(h)
        acc = torch.promote_types(weight.dtype, torch.float32)  # ∂W summed over blocks
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        grad_b = None if bias is None else torch.zeros(bias.shape, dtype=acc, device=bias.device)
        for r, c in _blocks(tokens.shape[0], tokens.shape[1], ctx.chunk_tokens):
            hb = h[r, c]  # [b, t, H]
            z = torch.nn.functional.linear(hb, weight, bias).to(lse.dtype)
            if tau != 1.0:
                z = z / tau
            g_out = grad_out[r, c].unsqueeze(-1).to(lse.dtype)  # [b, t, 1]
            g = (z - lse[r, c].unsqueeze(-1)).exp_().mul_(-g_out)
            g.scatter_add_(-1, tokens[r, c].unsqueeze(-1), g_out)
            gz = g.div_(tau).to(h.dtype)  # [b, t, V] ∂/∂logits
            grad_h[r, c] = gz @ weight
            flat_g, flat_h = gz.flatten(0, -2), hb.flatten(0, -2)
            grad_w.addmm_(flat_g.t().to(acc), flat_h.to(acc))
            if grad_b is not None:
                grad_b += flat_g.sum(0).to(acc)
        return (grad_h, grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None)  # fmt: skip


def head_token_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    tokens: torch.Tensor,
    *,
    chunk_tokens: int | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logprobs_and_entropy(linear(hidden, weight, bias), tokens)`` without the logits:
    hidden [B, T, H], weight [V, H] (the LM head), tokens [B, T] -> log-probs (with grad into
    hidden, weight, bias) and entropies [B, T]. Peak extra memory ~2·chunk_tokens·V floats
    instead of B·T·V logits and their gradient; one more head matmul in the backward pass.

    >>> h, w = torch.randn(2, 3, 4), torch.randn(5, 4)
    >>> lp, _ = head_token_logprobs_and_entropy(h, w, None, torch.zeros(2, 3, dtype=torch.long))
    >>> torch.allclose(lp, token_logprobs(h @ w.t(), torch.zeros(2, 3, dtype=torch.long)))
    True
    """
    if hidden.shape[:-1] != tokens.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} do not match tokens {tuple(tokens.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    chunk = _chunk(chunk_tokens, weight.shape[0])
    out, ent = _HeadTokenLogprobs.apply(hidden, weight, bias, tokens, chunk, temperature, True)
    return out, ent
