"""Log-probabilities of chosen tokens and entropies from logits, without a [B, T, V] float32 copy.

The obvious ``log_softmax(logits.float()).gather(...)`` materialises the float32 upcast *and* the
log-softmax, each B·T·V floats, and autograd keeps the log-softmax for the backward pass: with a
150k vocabulary, 8 × 1024 tokens is 4.9 GB per copy. Here the forward pass works ``chunk_size``
rows at a time and keeps only the per-position log-normaliser; the backward pass recomputes the
softmax chunk by chunk, ∂ log p(tok)/∂z_v = (1[v = tok] − p_v) / temperature, and returns the
gradient in the logits' own dtype. Both log-prob and entropy are computed in (at least) float32:
bf16 carries ~3 significant digits, too few for a log-normaliser over 10⁵ terms.
"""

from __future__ import annotations

from typing import Any

import torch


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    # float32 for fp16/bf16/fp32 logits; float64 stays float64 (gradcheck).
    return torch.promote_types(logits.dtype, torch.float32)


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(z / τ)[tok] with a chunked, recomputing backward (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: torch.Tensor, tokens: torch.Tensor, chunk_size: int, temperature: float
    ) -> torch.Tensor:
        dtype = _compute_dtype(logits)
        out = torch.empty(tokens.shape, dtype=dtype, device=logits.device)  # [B, T]
        lse = torch.empty_like(out)  # [B, T] log Σ_v exp(z_v / τ)
        for s in range(0, logits.shape[0], chunk_size):
            z = logits[s : s + chunk_size].to(dtype)  # [c, T, V]
            if temperature != 1.0:
                z = z / temperature
            lse[s : s + chunk_size] = torch.logsumexp(z, dim=-1)
            picked = z.gather(-1, tokens[s : s + chunk_size].unsqueeze(-1)).squeeze(-1)
            out[s : s + chunk_size] = picked - lse[s : s + chunk_size]
        ctx.save_for_backward(logits, tokens, lse)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        logits, tokens, lse = ctx.saved_tensors
        c, tau = ctx.chunk_size, ctx.temperature
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # [B, T, V]
        for s in range(0, logits.shape[0], c):
            z = logits[s : s + c].to(lse.dtype)  # [c, T, V]
            if tau != 1.0:
                z = z / tau
            g_out = grad_out[s : s + c].unsqueeze(-1).to(lse.dtype)  # [c, T, 1]
            g = (z - lse[s : s + c].unsqueeze(-1)).exp_().mul_(-g_out)  # −p_v · g
            g.scatter_add_(-1, tokens[s : s + c].unsqueeze(-1), g_out)  # + 1[v = tok] · g
            grad[s : s + c] = g.div_(tau)
        return grad, None, None, None


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, *, chunk_size: int = 8, temperature: float = 1.0
) -> torch.Tensor:
    """log π(tokens[b, t]) = z_tok/τ − logsumexp_v z_v/τ.  logits [B, T, V], tokens [B, T] -> [B, T].

    float32 result (float64 for float64 logits) whatever the logits' dtype; ``temperature`` τ
    scores tokens under the distribution the sampler drew them from. Peak extra memory is
    chunk_size·T·V floats in forward and backward; autograd keeps only [B, T] floats besides
    the logits themselves. Every token must be a valid id (no −100): mask the result instead.

    >>> token_logprobs(torch.zeros(1, 1, 4), torch.tensor([[2]])).tolist()  # log(1/4)
    [[-1.386...]]
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
    out: torch.Tensor = _TokenLogprobs.apply(logits, tokens, chunk_size, temperature)
    return out


def entropy_from_logits(logits: torch.Tensor, *, chunk_size: int = 8) -> torch.Tensor:
    """H = −Σ_v p_v log p_v = logsumexp(z) − Σ_v p_v z_v per position. [B, T, V] -> [B, T].

    At least float32, chunked over rows. Meant for metrics: call it on ``logits.detach()`` (with
    grad, autograd keeps each chunk's softmax, as an entropy bonus would need).

    >>> entropy_from_logits(torch.zeros(1, 1, 4)).tolist()  # uniform: log 4
    [[1.386...]]
    """
    dtype = _compute_dtype(logits)
    out = []
    for s in range(0, logits.shape[0], chunk_size):
        z = logits[s : s + chunk_size].to(dtype)  # [c, T, V]
        p = torch.softmax(z, dim=-1)
        out.append(torch.logsumexp(z, dim=-1) - (p * z).sum(-1))
    return torch.cat(out)  # [B, T]
