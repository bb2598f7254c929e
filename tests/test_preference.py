"""Preference losses (verirl.algos.preference): values by hand, the DPO gradient's form, and
TRL's DPO loss and metrics on identical models and rows.

The TRL comparison runs TRL 1.16's own ``DPOTrainer._compute_loss`` (Apache-2.0, installed in
the venv) on its collated batch; verirl tokenises the same rows with ``verirl.train.dpo`` and
computes the loss with its own functions. bf16=False: TRL's default on CPU wraps the prepared
reference model in bf16 autocast, which alone moves the log-ratios by ~1e-3.
"""

from __future__ import annotations

import doctest
import json
import math

import pytest
import torch

import verirl.algos.preference as pref
from verirl.algos.preference import (
    best_worst_pairs,
    bradley_terry_loss,
    dpo_metrics,
    dpo_sigmoid_loss,
    ipo_loss,
    preference_loss,
)


def test_doctests():
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    assert doctest.testmod(pref, optionflags=flags).failed == 0


def _sigma(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# (policy chosen, ref chosen, policy rejected, ref rejected) sequence log-probs, β.
LOGPS = (-1.0, -2.0, -3.0, -2.5)


def test_dpo_sigmoid_loss_by_hand():
    pc, rc, pr, rr = LOGPS
    h = (pc - rc) - (pr - rr)  # 1 − (−0.5) = 1.5
    got = dpo_sigmoid_loss(torch.tensor([pc - rc]), torch.tensor([pr - rr]), beta=0.2)
    assert got.item() == pytest.approx(-math.log(_sigma(0.2 * h)))  # log(1 + e^−0.3)
    assert got.item() == pytest.approx(0.5543552, abs=1e-6)


def test_label_smoothing_mixes_both_labels():
    c, r = torch.tensor([1.0]), torch.tensor([-0.5])
    got = dpo_sigmoid_loss(c, r, beta=0.2, label_smoothing=0.1).item()
    want = -0.9 * math.log(_sigma(0.3)) - 0.1 * math.log(_sigma(-0.3))
    assert got == pytest.approx(want) and got == pytest.approx(0.5843552, abs=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_sigmoid_loss(c, r, beta=0.2, label_smoothing=0.5)


def test_dpo_gradient_is_beta_sigma_of_the_wrong_margin():
    """∂L/∂h = −β σ(−β h) (Rafailov et al. eq. 7): pairs the implicit reward already ranks
    right weigh little, pairs it ranks wrong weigh up to β."""
    c = torch.tensor([2.0, -1.0], requires_grad=True)
    r = torch.zeros(2)
    dpo_sigmoid_loss(c, r, beta=0.5).sum().backward()
    want = [-0.5 * _sigma(-0.5 * h) for h in (2.0, -1.0)]
    assert c.grad is not None and c.grad.tolist() == pytest.approx(want)


def test_dpo_loss_is_finite_at_extreme_margins():
    big = torch.tensor([1e4, -1e4])
    loss = dpo_sigmoid_loss(big, torch.zeros(2), beta=1.0)
    assert torch.isfinite(loss).all()
    assert loss.tolist() == pytest.approx([0.0, 1e4])


@pytest.mark.parametrize(
    ("chosen", "rejected", "beta", "lengths", "want"),
    [
        (3.0, 1.0, 0.25, None, 0.0),  # gap 2 = 1/(2β): on target
        (4.0, 1.0, 0.5, None, 4.0),  # (3 − 1)²
        (6.0, 2.0, 0.5, (3.0, 2.0), 0.0),  # per token: 2 − 1 = 1 = 1/(2β)
        (0.0, 0.0, 0.5, (3.0, 2.0), 1.0),  # (0 − 1)²
    ],
)
def test_ipo_loss_by_hand(chosen, rejected, beta, lengths, want):
    n = (
        (None, None)
        if lengths is None
        else (torch.tensor([lengths[0]]), torch.tensor([lengths[1]]))
    )
    got = ipo_loss(torch.tensor([chosen]), torch.tensor([rejected]), beta, *n)
    assert got.item() == pytest.approx(want)


def test_bradley_terry_loss_by_hand():
    got = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]), margin=0.5)
    assert got.tolist() == pytest.approx([-math.log(_sigma(0.5)), -math.log(_sigma(-0.5))])


def test_preference_loss_dispatches_by_name():
    c, r = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0])
    assert preference_loss("sigmoid", c, r, 0.1).item() == pytest.approx(
        dpo_sigmoid_loss(c, r, 0.1).mean().item()
    )
    n = torch.tensor([2.0, 4.0])
    assert preference_loss("ipo", c, r, 0.1, 0.0, n, n).item() == pytest.approx(
        ipo_loss(c, r, 0.1, n, n).mean().item()
    )
    with pytest.raises(ValueError, match="unknown loss_type"):
        preference_loss("hinge", c, r, 0.1)
    with pytest.raises(ValueError, match="sigmoid"):
        preference_loss("ipo", c, r, 0.1, label_smoothing=0.1)


def test_dpo_metrics_by_hand():
    m = dpo_metrics(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, -1.0, 0.5]), beta=0.5)
    assert m["rewards/chosen"] == pytest.approx((0.5 - 1.0 + 0.25) / 3)
    assert m["rewards/rejected"] == pytest.approx((0.0 - 0.5 + 0.25) / 3)
    assert m["rewards/margins"] == pytest.approx((0.5 - 0.5 + 0.0) / 3)
    assert m["rewards/accuracies"] == pytest.approx(1 / 3)  # a tie is not a win


def test_loss_and_metrics_equal_trls_on_the_same_models_and_rows(tiny_model_dir, tmp_path):
    """TRL's DPOTrainer and verirl's DPO step (``dpo_update``, two micro-batches) on the same
    policy, reference and rows: loss (sigmoid, IPO, sigmoid + α·SFT as TRL's loss_type
    [sigmoid, sft]), TRL's four rewards/* metrics, and the policy gradient."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig as TrlDPOConfig
    from trl import DPOTrainer

    from verirl.config import validate_config
    from verirl.train.dpo import dpo_update
    from verirl.train.dpo_config import DpoConfig
    from verirl.train.model import Reference
    from verirl.train.pairwise import load_pairs

    policy_dir = tmp_path / "policy"  # the tiny model moved off the reference
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(policy_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    # Completions of different lengths, so IPO's per-token normalisation matters.
    rows = [{"prompt": f"{i}+{3 * i}=", "chosen": str(4 * i), "rejected": f"{4 * i + 7}" + "x" * (i % 3)}
            for i in range(6)]  # fmt: skip
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    beta = 0.3
    worst = 0.0
    for loss_type, sft_weight in (("sigmoid", 0.0), ("ipo", 0.0), ("sigmoid", 0.5)):
        trl_policy = AutoModelForCausalLM.from_pretrained(policy_dir)
        types = [loss_type, "sft"] if sft_weight else [loss_type]
        args = TrlDPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], beta=beta,
                            loss_type=types, loss_weights=[1.0, sft_weight][: len(types)],
                            per_device_train_batch_size=len(rows), use_cpu=True, bf16=False)  # fmt: skip
        trainer = DPOTrainer(model=trl_policy,
                             ref_model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                             args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tok)  # fmt: skip
        trainer.model.train()
        trl_batch = next(iter(trainer.get_train_dataloader()))  # all rows (the mean is order-free)
        trl_loss = trainer._compute_loss(trainer.model, trl_batch, False)
        trl_loss.backward()
        trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

        algo = {"beta": beta, "loss_type": loss_type, "sft_weight": sft_weight}
        cfg = validate_config(DpoConfig, {"model": {"path": str(policy_dir)},
                                          "data": {"path": str(data)}, "algo": algo}, "t")  # fmt: skip
        ours = AutoModelForCausalLM.from_pretrained(policy_dir)
        ref = Reference("frozen", AutoModelForCausalLM.from_pretrained(tiny_model_dir))
        pairs = load_pairs(cfg.data, "auto", tok, [tok.eos_token_id], 512)
        metrics = dpo_update(ours, ref, pairs, cfg.algo, 4, tok.pad_token_id, "cpu")

        keys = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
        diffs = [abs(metrics["loss"] - trl_loss.item())]
        diffs += [abs(metrics[k] - trl_metrics[k]) for k in keys]
        grads = dict(trl_policy.named_parameters())
        diffs += [(p.grad - grads[k].grad).abs().max().item() for k, p in ours.named_parameters()]
        worst = max(worst, *diffs)
        assert max(diffs) < 1e-5, (loss_type, sft_weight, diffs[:5])
        assert metrics["loss"] > 0.1  # the compared numbers are not trivially 0
    print(f"max |verirl − TRL| over loss, rewards/* and gradients: {worst:.2e}")


def test_best_worst_pairs_skip_groups_without_signal():
    rewards = torch.tensor([[0.0, 1.0, 0.5], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    valid = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 0], [0, 1, 1]])
    best, worst, has_pair = best_worst_pairs(rewards, valid)
    assert has_pair.tolist() == [True, False, False, True]  # all equal; one valid sample
    assert best[has_pair].tolist() == [1, 1] and worst[has_pair].tolist() == [0, 2]
