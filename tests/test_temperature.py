"""One logprob definition at every temperature: log softmax(z / T), top-k/top-p not renormalised.

The hf engine's sampled logprobs must equal what the trainer recomputes for π_old/π_θ (same
``sequence_logprobs``/``policy_update`` code the loop runs), and a GRPO update's first epoch
must see ratio π_θ/π_old = 1 and TIS weight 1 at T = 0.5. vLLM's side is in tests/test_vllm.py.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verirl.algos import POLICY_LOSSES
from verirl.rollout.base import SamplingParams
from verirl.rollout.hf import HFRolloutEngine
from verirl.train import update
from verirl.train.config import AlgoSection
from verirl.train.update import Rollout, rollout_logprobs, sequence_logprobs, to_batch

PROMPTS = ["1+1=", "12+30=", "7*6="]


def _setup(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _gap(engine_lp: torch.Tensor, trainer_lp: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((engine_lp - trainer_lp).abs() * mask).max())


@pytest.mark.parametrize(
    ("temperature", "top_k", "stop"),
    [(0.5, 0, ()), (1.0, 0, ()), (0.5, 8, ()), (0.5, 0, ("\n",))],
    ids=["T0.5", "T1", "T0.5-topk8", "T0.5-generate"],
)
def test_hf_engine_logprobs_equal_the_trainers_recomputation(
    tiny_model_dir, temperature, top_k, stop
):
    """Lean decoder (no stop strings) and transformers' ``generate`` (stop strings): ≤ 1e-5
    against ``sequence_logprobs`` at the same T; top-k restricts the draw, not the logprob."""
    model, tok = _setup(tiny_model_dir)
    sp = SamplingParams(max_new_tokens=12, temperature=temperature, top_k=top_k,
                        stop=stop, seed=3)  # fmt: skip
    groups = HFRolloutEngine(model, tok).generate(PROMPTS, n=4, sampling=sp)
    batch = to_batch(groups, tok.pad_token_id, "cpu")
    engine_lp = rollout_logprobs(groups, batch)
    trainer_lp, _ = sequence_logprobs(model, batch, micro=12, temperature=temperature)
    assert batch.mask.sum() > 40
    assert _gap(engine_lp, trainer_lp, batch.mask) <= 1e-5
    if temperature != 1.0:  # the untempered recomputation is far off: the test can fail
        untempered, _ = sequence_logprobs(model, batch, micro=12)
        assert _gap(engine_lp, untempered, batch.mask) > 0.05


def test_grpo_first_epoch_ratio_and_tis_weight_are_one_at_temperature_half(
    tiny_model_dir, monkeypatch
):
    """epochs = 2 at T = 0.5: π_old from ``sequence_logprobs``, π_θ from the update's forward,
    π_rollout from the engine; before any step all three agree token for token."""
    model, tok = _setup(tiny_model_dir)
    tau = 0.5
    sp = SamplingParams(max_new_tokens=10, temperature=tau, seed=1)
    groups = HFRolloutEngine(model, tok).generate(PROMPTS[:2], n=4, sampling=sp)
    batch = to_batch(groups, tok.pad_token_id, "cpu")
    old, _ = sequence_logprobs(model, batch, micro=8, temperature=tau)
    ro = Rollout(batch, torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]]), torch.ones(2, 4), old,
                 temperature=tau)  # fmt: skip
    ro.rollout_logp = rollout_logprobs(groups, batch)
    algo = AlgoSection(batch_size=8, group_size=4, epochs=2, tis_cap=2.0)
    ro = update.with_advantages(ro, algo, 10)
    ratios = []
    real = POLICY_LOSSES["ppo_clip"]

    def spy(logp, old_logp, adv, mask, params):
        ratios.append(((logp.detach() - old_logp).exp() - 1).abs().mul(mask).max())
        return real(logp, old_logp, adv, mask, params)

    monkeypatch.setitem(POLICY_LOSSES, "ppo_clip", spy)
    tokens = float(ro.batch.mask.sum())
    stats = update.policy_update(model, ro, algo, 8, 10, None, (tokens, 8.0),
                                 lambda _: nullcontext())  # fmt: skip
    assert len(ratios) == 1 and float(ratios[0]) <= 1e-5
    assert stats["clip_frac"] == 0.0
    assert abs(stats["tis_weight"] - 1.0) <= 1e-5
    # The same batch scored as if sampled at T = 1 (the old definition) is visibly off.
    ro.temperature = 1.0
    update.policy_update(model, ro, algo, 8, 10, None, (tokens, 8.0), lambda _: nullcontext())
    assert float(ratios[1]) > 0.05
