"""The blocked head (verirl.algos.logprobs.head_token_logprobs_and_entropy) equals the plain
computation, log_softmax(linear(h, W, b) / τ) gathered at the tokens: values, entropies and the
gradients of h, W and b, in each of its modes (logits kept, or each block projected again)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from verirl.algos import logprobs as lp_mod
from verirl.algos.logprobs import head_token_logprobs_and_entropy


def _plain(h, w, b, tokens, tau):
    """In float64: the reference the float32 result is held to."""
    h, w, b = (None if t is None else t.double() for t in (h, w, b))
    z = F.linear(h, w, b) / tau
    logp = torch.log_softmax(z, -1)
    ent = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), ent


def _inputs(dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(3, 7, 16, generator=g, dtype=dtype) * 2).requires_grad_(True)
    w = torch.randn(50, 16, generator=g, dtype=dtype).requires_grad_(True)
    b = torch.randn(50, generator=g, dtype=dtype).requires_grad_(True) if bias else None
    tokens = torch.randint(0, 50, (3, 7), generator=g)
    return h, w, b, tokens, torch.randn(3, 7, generator=g, dtype=dtype)


@pytest.mark.parametrize("keep", [True, False, None])
@pytest.mark.parametrize(
    ("tau", "bias", "chunk"), [(1.0, True, 4), (0.7, False, 7), (0.5, True, 1000)]
)
def test_head_logprobs_equal_log_softmax_of_the_projection(keep, tau, bias, chunk):
    """Ragged blocks (4 positions of 7-long rows), whole rows and one block; upstream weights
    on the log-probs like a policy-gradient loss's."""
    h, w, b, tokens, upstream = _inputs(bias=bias)
    params = [t for t in (h, w, b) if t is not None]
    want_lp, want_ent = _plain(h, w, b, tokens, tau)
    want_grads = torch.autograd.grad((want_lp * upstream.double()).sum(), params)
    lp, ent = head_token_logprobs_and_entropy(h, w, b, tokens, chunk_tokens=chunk,
                                              temperature=tau, keep_logits=keep)  # fmt: skip
    torch.testing.assert_close(lp.double(), want_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent.double(), want_ent.detach(), atol=1e-5, rtol=1e-5)
    assert not ent.requires_grad
    for got, want in zip(
        torch.autograd.grad((lp * upstream).sum(), params), want_grads, strict=True
    ):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_head_logprobs_gradcheck():
    """The recomputing mode (gradcheck runs several backward passes through one graph: the
    kept-logits mode refuses that, below)."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 3, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    w = torch.randn(9, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    b = torch.randn(9, generator=g, dtype=torch.float64).requires_grad_(True)
    tokens = torch.randint(0, 9, (2, 3), generator=g)

    def f(h, w, b):
        return head_token_logprobs_and_entropy(h, w, b, tokens, chunk_tokens=2,
                                               temperature=0.6, keep_logits=False)[0]  # fmt: skip

    assert torch.autograd.gradcheck(f, (h, w, b))


def test_kept_logits_become_the_gradient_so_a_second_backward_is_refused():
    h, w, b, tokens, _ = _inputs()
    lp, _ = head_token_logprobs_and_entropy(h, w, b, tokens, keep_logits=True)
    lp.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="allows one backward pass"):
        lp.sum().backward()


def test_auto_keeps_logits_only_when_a_gradient_is_taken_and_they_are_small(monkeypatch):
    """keep_logits=None: the [B, T, V] projection is one matmul with grad; under no_grad (π_old,
    π_ref) or above KEEP_LOGITS_ELEMENTS each matmul covers one block of positions."""
    h, w, b, tokens, _ = _inputs()
    rows: list[int] = []
    real = F.linear
    monkeypatch.setattr(
        lp_mod.F, "linear", lambda x, *a: rows.append(x[..., 0].numel()) or real(x, *a)
    )

    def widest(grad: bool, limit: int) -> int:
        rows.clear()
        monkeypatch.setattr(lp_mod, "KEEP_LOGITS_ELEMENTS", limit)
        with torch.set_grad_enabled(grad):
            head_token_logprobs_and_entropy(h, w, b, tokens, chunk_tokens=7)
        return max(rows)

    assert widest(True, 2**28) == 21  # all 3 × 7 positions at once, kept
    assert widest(False, 2**28) == 7  # no_grad: one row per block
    assert widest(True, 3 * 7 * 50 - 1) == 7  # too many logits: blocks
