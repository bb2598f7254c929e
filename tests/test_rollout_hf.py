"""HF rollout engine: shapes, end tokens, logprobs equal the model's own, seeded sampling."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verirl.rollout.base import SamplingParams
from verirl.rollout.hf import HFRolloutEngine, _draw


@pytest.mark.parametrize("weights", ["fused", "separate", "transformers"])
def test_generate_shapes_logprobs_and_seed(tiny_model_dir, monkeypatch, weights):
    """The lean decoder with fused q|k|v / gate|up copies, with the model's own weights (models
    above FUSE_MAX_PARAMS), and the model's own forward (lean=False, the CUDA default)."""
    from verirl import lean_model
    from verirl.rollout import hf

    if weights == "separate":
        monkeypatch.setattr(lean_model, "FUSE_MAX_PARAMS", 0)
    made = []
    real = hf.LeanDecoder
    monkeypatch.setattr(hf, "LeanDecoder", lambda *a: made.append(real(*a)) or made[-1])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = HFRolloutEngine(model, tok, lean=None if weights != "transformers" else False)
    sp = SamplingParams(max_new_tokens=6, temperature=1.0, seed=7)
    out = engine.generate(["1+1=", "12+30="], n=3, sampling=sp)
    assert [len(x) for x in out] == [3, 3]
    for i, group in enumerate(out):
        for j, c in enumerate(group):
            assert (c.prompt_index, c.sample_index) == (i, j)
            assert len(c.token_ids) == len(c.logprobs) <= 6
            assert c.finish_reason in ("stop", "length")
            if c.finish_reason == "stop":
                assert c.token_ids[-1] == tok.eos_token_id
    # Logprobs are the model's own: recompute with a forward pass. Every sample, so the shorter
    # (left-padded) prompt and the prefill shared by a prompt's n samples are both covered.
    for c in (c for g in out for c in g):
        ids = torch.tensor([c.prompt_token_ids + c.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(c.prompt_token_ids) - 1 : -1]
        ref = torch.log_softmax(logits.float(), -1)
        ref = ref.gather(-1, ids[0, len(c.prompt_token_ids) :, None]).squeeze(-1)
        assert torch.allclose(ref, torch.tensor(c.logprobs), atol=1e-5)
    assert len(made) == (weights != "transformers")
    assert all(d.fused == (weights == "fused") for d in made)
    again = engine.generate(["1+1=", "12+30="], n=3, sampling=sp)
    assert [[x.token_ids for x in g] for g in again] == [[x.token_ids for x in g] for g in out]
    model.train()  # generate evaluates in eval mode and restores the caller's mode
    engine.generate(["1="], n=1, sampling=sp)
    assert model.training


def test_draw_follows_the_distribution_and_never_picks_probability_zero():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])  # zeros as top-k/top-p leave them
    n = 40_000
    draws = _draw(probs.expand(n, -1))
    freq = torch.bincount(draws, minlength=5).float() / n
    assert freq[1] == 0 and freq[4] == 0
    assert torch.allclose(freq, probs, atol=0.01)  # 5 sigma at n = 40k
    assert _draw(torch.tensor([[0.0, 0.0, 1.0]])).tolist() == [2]


@pytest.mark.parametrize("stop", [(), ("\n",)], ids=["lean", "generate"])
def test_generation_config_end_tokens_stop_like_eos(tiny_model_dir, stop):
    """A generation config listing two end tokens (as Qwen2.5-Instruct's does): the engine
    stops on either, keeps it as the last token, and leaves it out of the text."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = "1+1="
    with torch.no_grad():
        first = int(model(torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1].argmax())
    assert first != tok.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, first]
    engine = HFRolloutEngine(model, tok)
    assert engine.end_ids == [tok.eos_token_id, first]
    greedy = engine.generate([prompt], 1, SamplingParams(8, temperature=0.0, stop=stop))[0][0]
    assert (greedy.token_ids, greedy.finish_reason, greedy.text) == ([first], "stop", "")
    sampled = engine.generate([prompt], 16, SamplingParams(8, temperature=1.0, stop=stop, seed=0))
    for c in sampled[0]:
        ends = [t for t in c.token_ids if t in engine.end_ids]
        assert ends == ([c.token_ids[-1]] if c.finish_reason == "stop" and not c.text.endswith("\n") else [])  # fmt: skip
