"""The lean training forward (verirl.lean_model.train_forward) computes what transformers' forward
does: logits, last hidden state and every parameter's gradient, on a right-padded batch."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from verirl.lean_model import is_plain
from verirl.train import model as model_mod
from verirl.train.model import Batch, forward_logits, pack


def _grads_and_outputs(model, batch, weights):
    """Padding positions differ (their outputs are never used): `weights` is 0 there."""
    model.zero_grad(set_to_none=True)
    logits, hidden = forward_logits(model, batch, hidden=True)
    ((logits * weights).sum() + (hidden * weights[..., :1]).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return logits.detach(), hidden.detach(), grads


def _matches_transformers(model, batch, monkeypatch, spy: str) -> list:
    """Run `batch` through transformers' forward and through the lean path, assert the same
    logits, hidden states and gradients; returns the positional args of each call of
    ``verirl.train.model.<spy>`` (the lean function that should have run)."""
    real = batch.attention_mask[:, :-1].bool()  # positions predicting a real next token
    weights = torch.rand(*batch.targets.shape, model.config.vocab_size) * real[..., None]
    monkeypatch.setattr(model_mod, "AUTO_LEAN", False)
    ref = _grads_and_outputs(model, batch, weights)
    monkeypatch.setattr(model_mod, "AUTO_LEAN", True)
    calls = []
    fn = getattr(model_mod, spy)
    monkeypatch.setattr(model_mod, spy, lambda *a, **k: calls.append(a) or fn(*a, **k))
    lean = _grads_and_outputs(model, batch, weights)
    assert torch.allclose(lean[0][real], ref[0][real], atol=1e-5)
    assert torch.allclose(lean[1][real], ref[1][real], atol=1e-5)
    for name, g in ref[2].items():  # float32 rounding, relative to the gradient's scale
        assert (lean[2][name] - g).abs().max() <= 1e-5 * g.abs().max(), name
    return calls


def test_lean_forward_matches_transformers(tiny_model_dir, monkeypatch):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    assert is_plain(model)
    batch = pack([[5, 6, 7], [8, 9], [10]], [[11, 12, 13, 1], [14, 1], [15, 16]], 0, "cpu")
    assert _matches_transformers(model, batch, monkeypatch, "train_forward"), "lean path taken"


def test_lean_forward_falls_back_on_left_padding(tiny_model_dir, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    monkeypatch.setattr(model_mod, "AUTO_LEAN", True)
    ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    att = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    batch = Batch(ids, att, ids[:, 1:], att[:, 1:].float())
    assert not model_mod._lean_ok(model, batch)
    with torch.no_grad():
        logits, _ = forward_logits(model, batch)
        ref = model(input_ids=ids, attention_mask=att).logits[:, :-1]
    assert torch.equal(logits, ref)


@pytest.mark.parametrize("attention", ["explicit", "sdpa"])
def test_shared_prompt_forward_matches_transformers(tiny_model_dir, monkeypatch, attention):
    """GRPO-shaped batch: 3 prompts of different lengths x 4 completions of different lengths
    (one of a single token). Each prompt runs once; outputs and gradients are transformers'."""
    from verirl import lean_model

    if attention == "sdpa":  # the path long sequences (and GPUs) take
        monkeypatch.setattr(lean_model, "EXPLICIT_ATTENTION_ELEMENTS", 0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    rows = [(p, torch.randint(2, 250, (n,)).tolist()) for p in prompts for n in (9, 1, 12, 7)]
    batch = pack([p for p, _ in rows], [c for _, c in rows], 0, "cpu")
    calls = _matches_transformers(model, batch, monkeypatch, "train_forward_shared")
    assert [c[3] for c in calls] == [prompts], "each distinct prompt once"
    # distinct prompts (SFT) save nothing: the plain lean forward runs
    one_each = batch.slice(torch.tensor([0, 4, 8]))
    lengths = one_each.attention_mask.sum(-1).tolist()
    assert lean_model.shared_prompt_rows(one_each.input_ids, lengths, [6, 2, 4]) is None


@pytest.mark.parametrize("path", ["transformers", "lean", "shared"])
def test_logits_from_the_first_completion_column(tiny_model_dir, monkeypatch, path):
    """`start=batch.first_target()` returns the same logits and hidden states as the full
    forward, without the prompt columns (TRL's logits_to_keep)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    monkeypatch.setattr(model_mod, "AUTO_LEAN", path != "transformers")
    monkeypatch.setattr(model_mod, "SHARE_PROMPTS", path == "shared")
    prompts = [[5, 6, 7, 8, 9], [11, 12, 13]]
    rows = [(p, torch.randint(2, 250, (n,)).tolist()) for p in prompts for n in (4, 7, 2)]
    batch = pack([p for p, _ in rows], [c for _, c in rows], 0, "cpu")
    first = batch.first_target()
    assert first == 2 and not batch.mask[:, :first].any() and batch.mask[:, first].any()
    with torch.no_grad():
        full_logits, full_hidden = forward_logits(model, batch, hidden=True)
        logits, hidden = forward_logits(model, batch, hidden=True, start=first)
    real = batch.attention_mask[:, 1:].bool()[:, first:]
    assert logits.shape[1] == batch.targets.shape[1] - first == hidden.shape[1]
    torch.testing.assert_close(logits[real], full_logits[:, first:][real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden[real], full_hidden[:, first:][real], atol=1e-5, rtol=1e-5)


def test_resolve_forward_takes_the_lean_path_only_on_cpu_outside_torchrun(tiny_model_dir):
    """model.forward=auto: lean for a plain fp32 model on CPU (bf16 measured slower); the model's own forward
    under torchrun (DDP's π_θ must be the wrapped forward, so π_old/π_ref are too), for
    LoRA models, fp16, and other devices (meta stands in for CUDA here)."""
    from peft import LoraConfig, get_peft_model

    from verirl.errors import ConfigError
    from verirl.train.model import resolve_forward

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert resolve_forward("auto", model) == resolve_forward("lean", model) == "lean"
    assert resolve_forward("auto", model.bfloat16()) == "transformers"
    assert resolve_forward("lean", model.bfloat16()) == "lean"  # still there when asked
    assert resolve_forward("auto", model, distributed=True) == "transformers"
    assert resolve_forward("transformers", model) == "transformers"
    with pytest.raises(ConfigError, match="torchrun"):
        resolve_forward("lean", model, distributed=True)
    assert resolve_forward("auto", model.half()) == "transformers"
    with torch.device("meta"):
        assert resolve_forward("auto", AutoModelForCausalLM.from_config(model.config)) == "transformers"  # fmt: skip
    lora = get_peft_model(model.float(), LoraConfig(r=2, target_modules=["q_proj"]))
    assert resolve_forward("auto", lora) == "transformers"
    with pytest.raises(ConfigError, match=r"model\.forward: 'lean' supports"):
        resolve_forward("lean", lora)


@pytest.mark.parametrize("shared", [True, False])
def test_blockwise_head_logprobs_equal_the_logits_path(tiny_model_dir, monkeypatch, shared):
    """Large batches on the lean path score tokens from the hidden state in blocks (no
    [B, T, V] logits): the same log-probs, entropies and gradients as logits + log-softmax."""
    from verirl.train.model import forward_logprobs

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    monkeypatch.setattr(model_mod, "SHARE_PROMPTS", shared)
    prompts = [[5, 6, 7, 8, 9], [11, 12, 13]]
    rows = [(p, torch.randint(2, 250, (n,)).tolist()) for p in prompts for n in (4, 7, 2)]
    batch = pack([p for p, _ in rows], [c for _, c in rows], 0, "cpu")
    first, out = batch.first_target(), {}
    calls = []
    real = model_mod.head_token_logprobs_and_entropy
    monkeypatch.setattr(model_mod, "head_token_logprobs_and_entropy",
                        lambda *a, **k: calls.append(1) or real(*a, **k))  # fmt: skip
    for limit in (2**40, 0):
        monkeypatch.setattr(model_mod, "HEAD_BLOCK_MIN_ELEMENTS", limit)
        model.zero_grad(set_to_none=True)
        lp, ent, h = forward_logprobs(model, batch, start=first, temperature=0.7, hidden=True)
        ((lp * batch.mask[:, first:]).sum() + h.sum()).backward()
        out[limit] = (lp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters()})
    assert calls == [1]
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = out[2**40], out[0]
    m = batch.mask[:, first:].bool()
    torch.testing.assert_close(lp_b[m], lp_a[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_b[m], ent_a[m], atol=1e-5, rtol=1e-5)
    for n, g in g_a.items():
        assert (g_b[n] - g).abs().max() <= 1e-5 * g.abs().max() + 1e-7, n


def test_a_real_vocabulary_takes_the_head_function_on_the_lean_path(monkeypatch):
    """Vocabularies of real models (>= HEAD_PATH_MIN_VOCAB) score tokens through the head
    function on the lean path (less peak memory on the real-vocabulary benchmark): the same
    log-probs and gradients as transformers' own forward + log-softmax."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from verirl.train.model import forward_logprobs

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=model_mod.HEAD_PATH_MIN_VOCAB + 5, hidden_size=32,
                      intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=True)  # fmt: skip
    model = Qwen2ForCausalLM(cfg).float()
    rows = [([5, 6, 7], [8, 9, 10, 11]), ([12, 13], [14, 15])]
    batch = pack([p for p, _ in rows], [c for _, c in rows], 0, "cpu")
    first = batch.first_target()
    calls = []
    real = model_mod.head_token_logprobs_and_entropy
    monkeypatch.setattr(model_mod, "head_token_logprobs_and_entropy",
                        lambda *a, **k: calls.append(1) or real(*a, **k))  # fmt: skip
    out = {}
    for forward in ("transformers", "lean"):
        model.zero_grad(set_to_none=True)
        lp, _, _ = forward_logprobs(model, batch, start=first, forward=forward, temperature=0.5)
        (lp * batch.mask[:, first:]).sum().backward()
        out[forward] = (lp.detach(), model.lm_head.weight.grad.clone())
    assert calls == [1]  # the lean path only
    m = batch.mask[:, first:].bool()
    torch.testing.assert_close(out["lean"][0][m], out["transformers"][0][m], atol=1e-5, rtol=1e-5)
    g_t, g_l = out["transformers"][1], out["lean"][1]
    assert (g_l - g_t).abs().max() <= 1e-5 * g_t.abs().max() + 1e-7
