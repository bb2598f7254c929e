"""Online DPO's update (verirl.train.online_dpo): pairs are each group's best vs worst sample,
groups without a reward difference are skipped and counted, and the loss, metrics and
gradients equal offline ``verirl dpo``'s on the same pairs."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verirl.algos import token_logprobs
from verirl.train.dpo import dpo_update
from verirl.train.dpo_config import DpoAlgo
from verirl.train.model import Reference, forward_logits, pack
from verirl.train.online_dpo import online_dpo_update, pair_rows
from verirl.train.pairwise import Pair


@pytest.mark.parametrize(
    ("rewards", "valid", "chosen", "rejected", "skipped"),
    [
        ([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]], [[1, 1, 1], [1, 1, 1]], [1], [0], 1),
        ([[0.2, 0.9], [0.0, 1.0]], [[1, 1], [1, 1]], [1, 3], [0, 2], 0),
        ([[1.0, 0.0, 0.0]], [[0, 1, 1]], [], [], 1),  # the only 1.0 is an infra error
    ],
)
def test_pair_rows(rewards, valid, chosen, rejected, skipped):
    c, r, stats = pair_rows(torch.tensor(rewards), torch.tensor(valid))
    assert c.tolist() == chosen and r.tolist() == rejected
    assert stats == {"dpo/pairs": float(len(chosen)), "dpo/groups_skipped": float(skipped)}


def _policy(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_online_update_equals_offline_dpo_on_the_same_pairs(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tok.eos_token_id
    prompts = [tok("3+4=")["input_ids"], tok("1+1=")["input_ids"], tok("5+0=")["input_ids"]]
    samples = [["7", "8", "12"], ["2", "2", "2"], ["4", "5", "50"]]  # G = 3 per prompt
    comps = [[tok(s)["input_ids"] + [eos] for s in g] for g in samples]
    rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    batch = pack([p for p in prompts for _ in range(3)], [c for g in comps for c in g],
                 tok.pad_token_id, "cpu")  # fmt: skip
    ref_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # what the loop's reference pass gives: per-token log π_ref
        logits, _ = forward_logits(ref_model, batch)
        ref_logp = token_logprobs(logits, batch.targets) * batch.mask

    online = _policy(tiny_model_dir)
    got = online_dpo_update(online, batch, ref_logp, rewards, torch.ones(3, 3), beta=0.2, micro=1)
    assert got["dpo/pairs"] == 2 and got["dpo/groups_skipped"] == 1  # all-equal group 2

    offline = _policy(tiny_model_dir)
    pairs = [Pair(prompts[0], comps[0][0], comps[0][1]), Pair(prompts[2], comps[2][1], comps[2][0])]
    ref = Reference("frozen", AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    want = dpo_update(offline, ref, pairs, DpoAlgo(beta=0.2), micro=2, pad=tok.pad_token_id,
                      device="cpu")  # fmt: skip
    for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert got[k] == pytest.approx(want[k], abs=1e-6), k
    grads = dict(offline.named_parameters())
    diff = max((p.grad - grads[n].grad).abs().max().item() for n, p in online.named_parameters())
    assert diff < 1e-6 and any(p.grad.abs().sum() > 0 for p in online.parameters())


def test_no_pair_means_no_gradient(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok("1+1=")["input_ids"]
    batch = pack([ids, ids], [[17, 1], [18, 1]], tok.pad_token_id, "cpu")
    model = _policy(tiny_model_dir)
    out = online_dpo_update(model, batch, torch.zeros_like(batch.mask), torch.ones(1, 2),
                            torch.ones(1, 2), beta=0.1)  # fmt: skip
    assert out == {"dpo/pairs": 0.0, "dpo/groups_skipped": 1.0}
    assert all(p.grad is None for p in model.parameters())
