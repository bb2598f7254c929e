"""HF rollout engine: shapes, EOS handling, logprobs equal the model's own, seeded sampling."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verirl.rollout.base import SamplingParams
from verirl.rollout.hf import HFRolloutEngine


def test_generate_shapes_logprobs_and_seed(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = HFRolloutEngine(model, tok)
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
    # Logprobs are the model's own: recompute with a forward pass.
    c = out[1][2]
    ids = torch.tensor([c.prompt_token_ids + c.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(c.prompt_token_ids) - 1 : -1]
    ref = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, len(c.prompt_token_ids) :, None])
    assert torch.allclose(ref.squeeze(-1), torch.tensor(c.logprobs), atol=1e-4)
    again = engine.generate(["1+1=", "12+30="], n=3, sampling=sp)
    assert [[x.token_ids for x in g] for g in again] == [[x.token_ids for x in g] for g in out]
    model.train()  # generate evaluates in eval mode and restores the caller's mode
    engine.generate(["1="], n=1, sampling=sp)
    assert model.training
