"""Log-probabilities of chosen tokens and entropies, without a [B, T, V] float32 copy.

The obvious ``log_softmax(logits.float()).gather(...)`` materialises the float32 upcast *and* the
log-softmax, each B·T·V floats, and autograd keeps the log-softmax for the backward pass: with a
150k vocabulary, 8 × 1024 tokens is 4.9 GB per copy. ``_TokenLogprobs`` instead works on blocks
of ``chunk_tokens`` positions and keeps only the per-position log-normaliser; the backward pass
forms the softmax again block by block, ∂ log p(tok)/∂z_v = (1[v = tok] − p_v) / τ.

One function serves two sources of a block's logits z:

- the logits themselves (``token_logprobs``): the gradient is ∂z, in the logits' own dtype;
- the last hidden state and the LM head (``head_token_logprobs_and_entropy``): z = h·Wᵀ + b is
  projected block by block and the backward pass turns each block's ∂z straight into
  ∂h = ∂z·W, ∂W += ∂zᵀ·h, ∂b += Σ ∂z (the liger-kernel "fused linear cross-entropy" idea, in
  plain torch), so no [B, T, V] gradient exists. With ``keep_logits`` the projected logits are
  kept for the backward, which overwrites them with their gradient: B·T·V floats in all instead
  of logits + gradient, and the matmuls of a plain head; without, each block is projected again
  (one more head matmul, memory O(chunk_tokens · V)).

Both log-prob and entropy are computed in (at least) float32: bf16 carries ~3 significant digits,
too few for a log-normaliser over 10⁵ terms.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
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
# ``head_token_logprobs_and_entropy`` keeps the projected logits for the backward pass up to this
# many elements (1 GiB in float32) and projects each block again above it.
KEEP_LOGITS_ELEMENTS = 2**28


def _chunk(chunk_tokens: int | None, vocab: int) -> int:
    if chunk_tokens is None:
        return max(1, BLOCK_ELEMENTS // max(vocab, 1))
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    return chunk_tokens


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # float32 for fp16/bf16/fp32 inputs; float64 stays float64 (gradcheck).
    return torch.promote_types(x.dtype, torch.float32)


def _check(x: torch.Tensor, tokens: torch.Tensor, temperature: float, what: str) -> None:
    if x.shape[:-1] != tokens.shape:
        raise ValueError(f"{what} {tuple(x.shape)} do not match tokens {tuple(tokens.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _block_logits(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, r: slice, c: slice
) -> torch.Tensor:
    """Logits of block (r, c) [b, t, V]: x itself, or the head's projection of hidden x."""
    return x[r, c] if weight is None else F.linear(x[r, c], weight, bias)


def _entropy(z: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """H = −Σ_v p_v log p_v with log p = z − lse ([b, t, V], [b, t] -> [b, t]). Not the equal
    lse − Σ_v p_v z_v: with logits in the tens that difference loses ~1e-5 to cancellation."""
    logp = z - lse.unsqueeze(-1)
    return -(logp.exp() * logp).sum(-1)


def _logit_grad(
    z: torch.Tensor, lse: torch.Tensor, tokens: torch.Tensor, g: torch.Tensor, tau: float
) -> torch.Tensor:
    """∂(g · log softmax(z/τ)[tok])/∂z = g · (1[v = tok] − p_v) / τ for one block (z unscaled)."""
    zs = z.to(lse.dtype)
    zs = zs / tau if tau != 1.0 else zs
    g = g.unsqueeze(-1).to(lse.dtype)  # [b, t, 1]
    out = (zs - lse.unsqueeze(-1)).exp_().mul_(-g)  # −p_v · g
    return out.scatter_add_(-1, tokens.unsqueeze(-1), g).div_(tau)  # + 1[v = tok] · g


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(z / τ)[tok] (and the entropy) block by block, z = x (weight None) or
    x·Wᵀ + b; the backward forms each block's softmax again (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,  # [B, T, V] logits, or [B, T, H] hidden states with `weight`
        weight: torch.Tensor | None,  # [V, H] LM head
        bias: torch.Tensor | None,  # [V]
        tokens: torch.Tensor,  # [B, T]
        chunk_tokens: int,
        temperature: float,
        with_entropy: bool,
        keep_logits: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = _compute_dtype(x)
        out = torch.empty(tokens.shape, dtype=dtype, device=x.device)  # [B, T]
        lse = torch.empty_like(out)  # [B, T] log Σ_v exp(z_v / τ)
        ent = torch.empty_like(out) if with_entropy else out.new_empty(0)  # [B, T]
        # Kept, the head's logits [B, T, V] in one matmul; the backward overwrites them with
        # their gradient (so a second backward through the same graph is refused).
        kept = F.linear(x, weight, bias) if weight is not None and keep_logits else None
        for r, c in _blocks(tokens.shape[0], tokens.shape[1], chunk_tokens):
            raw = kept[r, c] if kept is not None else _block_logits(x, weight, bias, r, c)
            z = raw.to(dtype)  # [b, t, V]
            z = z / temperature if temperature != 1.0 else z
            lse[r, c] = torch.logsumexp(z, dim=-1)
            out[r, c] = z.gather(-1, tokens[r, c].unsqueeze(-1)).squeeze(-1) - lse[r, c]
            if with_entropy:  # while the block is at hand
                ent[r, c] = _entropy(z, lse[r, c])
        ctx.save_for_backward(x, weight, bias, tokens, lse, kept)
        ctx.chunk_tokens, ctx.temperature = chunk_tokens, temperature
        ctx.mark_non_differentiable(ent)
        return out, ent

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: torch.Tensor, _grad_entropy: Any
    ) -> tuple[Any, ...]:
        try:
            x, weight, bias, tokens, lse, kept = ctx.saved_tensors
        except RuntimeError as e:  # the kept logits are already their gradient
            raise RuntimeError("head_token_logprobs_and_entropy(keep_logits=True) allows one "
                               "backward pass (retain_graph, gradcheck: keep_logits=False)") from e  # fmt: skip
        tau, blocks = ctx.temperature, _blocks(tokens.shape[0], tokens.shape[1], ctx.chunk_tokens)
        if weight is None or kept is not None:  # ∂ logits [B, T, V], then (head) two matmuls
            grad_z = torch.empty(x.shape, dtype=x.dtype, device=x.device) if kept is None else kept
            z = x if kept is None else kept
            for r, c in blocks:
                grad_z[r, c] = _logit_grad(z[r, c], lse[r, c], tokens[r, c], grad_out[r, c], tau)
            if weight is None:
                return grad_z, None, None, None, None, None, None, None
            flat_g = grad_z.flatten(0, -2).to(weight.dtype)  # [B·T, V] (autocast: bf16 logits)
            grad_b = None if bias is None else flat_g.sum(0).to(bias.dtype)
            grad_w = flat_g.t() @ x.flatten(0, -2).to(weight.dtype)  # [V, H]
            grad_x = (flat_g @ weight).view(x.shape).to(x.dtype)
            return grad_x, grad_w, grad_b, None, None, None, None, None
        grad_x = torch.zeros_like(x)  # ∂h, block by block from each block's projection again
        acc = torch.promote_types(weight.dtype, torch.float32)  # ∂W, ∂b summed over blocks
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        grad_b = None if bias is None else torch.zeros(bias.shape, dtype=acc, device=bias.device)
        for r, c in blocks:
            z = _block_logits(x, weight, bias, r, c)
            gz = _logit_grad(z, lse[r, c], tokens[r, c], grad_out[r, c], tau).to(weight.dtype)
            grad_x[r, c] = gz @ weight
            flat_g, flat_x = gz.flatten(0, -2), x[r, c].flatten(0, -2)  # [b·t, V], [b·t, H]
            grad_w.addmm_(flat_g.t().to(acc), flat_x.to(acc))
            if grad_b is not None:
                grad_b += flat_g.sum(0).to(acc)
        return (grad_x, grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None, None)  # fmt: skip


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
    return token_logprobs_and_entropy(
        logits, tokens, chunk_tokens=chunk_tokens, temperature=temperature, entropy=False
    )[0]


def token_logprobs_and_entropy(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    chunk_tokens: int | None = None,
    temperature: float = 1.0,
    entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logprobs`` and, from the same pass over the logits, the entropy of each
    position's distribution softmax(z/τ), H = −Σ_v p_v log p_v ([B, T], no grad;
    an empty tensor with ``entropy=False``).

    Equals ``(token_logprobs(...), entropy_from_logits(logits.detach() / τ))`` without the
    second read of the [B, T, V] logits and the second logsumexp; gradients flow through the
    log-probs only.

    >>> lp, h = token_logprobs_and_entropy(torch.zeros(1, 1, 4), torch.tensor([[2]]))
    >>> lp.tolist(), h.tolist()  # uniform over 4: log(1/4), log 4
    ([[-1.386...]], [[1.386...]])
    """
    _check(logits, tokens, temperature, "logits")
    chunk = _chunk(chunk_tokens, logits.shape[-1])
    out, ent = _TokenLogprobs.apply(logits, None, None, tokens, chunk, temperature, entropy, False)
    return out, ent


def head_token_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    tokens: torch.Tensor,
    *,
    chunk_tokens: int | None = None,
    temperature: float = 1.0,
    keep_logits: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logprobs_and_entropy(linear(hidden, weight, bias), tokens)`` without a [B, T, V]
    gradient: hidden [B, T, H], weight [V, H] (the LM head), tokens [B, T] -> log-probs (with
    grad into hidden, weight, bias) and entropies [B, T].

    ``keep_logits`` True keeps the B·T·V projected logits for the backward pass (half the
    memory of logits + their gradient, the same matmuls); False projects each block again in
    the backward (one more head matmul, peak extra memory ~2·chunk_tokens·V floats); None
    (default) keeps them up to ``KEEP_LOGITS_ELEMENTS`` when a gradient will be taken.

    >>> h, w = torch.randn(2, 3, 4), torch.randn(5, 4)
    >>> lp, _ = head_token_logprobs_and_entropy(h, w, None, torch.zeros(2, 3, dtype=torch.long))
    >>> torch.allclose(lp, token_logprobs(h @ w.t(), torch.zeros(2, 3, dtype=torch.long)))
    True
    """
    _check(hidden, tokens, temperature, "hidden")
    chunk = _chunk(chunk_tokens, weight.shape[0])
    if keep_logits is None:  # never under no_grad (π_old, π_ref): blocks then bound the memory
        grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
        keep_logits = grad and tokens.numel() * weight.shape[0] <= KEEP_LOGITS_ELEMENTS
    out, ent = _TokenLogprobs.apply(hidden, weight, bias, tokens, chunk, temperature, True,
                                    keep_logits)  # fmt: skip
    return out, ent


def entropy_from_logits(logits: torch.Tensor, *, chunk_tokens: int | None = None) -> torch.Tensor:
    """H = −Σ_v p_v log p_v per position. [B, T, V] -> [B, T].

    At least float32, in blocks of ``chunk_tokens`` positions (default as ``token_logprobs``). Meant for metrics: call it on
    ``logits.detach()`` (with grad, autograd keeps each block's softmax).

    >>> entropy_from_logits(torch.zeros(1, 1, 4)).tolist()  # uniform: log 4
    [[1.386...]]
    """
    dtype = _compute_dtype(logits)
    out = torch.empty(logits.shape[:-1], dtype=dtype, device=logits.device)  # [B, T]
    for r, c in _blocks(out.shape[0], out.shape[1], _chunk(chunk_tokens, logits.shape[-1])):
        z = logits[r, c].to(dtype)  # [b, t, V]
        out[r, c] = _entropy(z, torch.logsumexp(z, dim=-1))
    return out
