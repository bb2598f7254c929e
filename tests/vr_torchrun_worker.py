"""The 2-rank checks of ``verirl.train.distributed``: this file is torchrun's worker script.

One ``torchrun --standalone --nproc-per-node 2`` launch (``launch``, started once a session by
the ``two_ranks`` fixture of ``vr_torchrun_plugin``) runs ``worker`` on every rank and writes
per-rank results (``rank_results``); the ``test_distributed_*`` files compare them with the
same step run in the pytest process (world size 1, ``train_step``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from verirl.errors import UserError
from verirl.train.distributed import (
    DistContext,
    all_reduce_metrics,
    barrier,
    broadcast_object,
    clip_grad_norm,
    dist_state,
    full_state_dict,
    gather_objects,
    global_masked_whiten,
    init_distributed,
    load_full_state,
    loss_normalizer,
    no_sync_if,
    optimizer_state_dict,
    rank_seed,
    restore_dist_state,
    save_pretrained,
    shard_groups,
    shutdown,
    unwrap,
    wrap_model,
)

GROUPS, GROUP_SIZE, MICRO = 4, 2, 2
# Completion lengths per sequence: ranks get very different token counts (rank 0: 2 long
# groups), so a mean of per-rank token means would NOT equal the global token mean.
COMPLETION_LENS = [9, 7, 8, 6, 2, 1, 3, 2]
PROMPT_LENS = [4, 4, 3, 3, 5, 5, 2, 2]
CASES = ("ddp", "ddp_lora", "fsdp2", "fsdp2_lora")


def global_batch() -> tuple[list[list[int]], list[list[int]], torch.Tensor]:
    """Prompts, completions (token ids) and one advantage per sequence, fixed by seed."""
    g = torch.Generator().manual_seed(1234)
    prompts = [torch.randint(2, 258, (n,), generator=g).tolist() for n in PROMPT_LENS]
    comps = [torch.randint(2, 258, (n,), generator=g).tolist() for n in COMPLETION_LENS]
    adv = torch.randn(len(comps), generator=g)
    return prompts, comps, adv


def load_model(model_dir: str, lora: bool) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)  # same LoRA init on every rank (FSDP2 does not broadcast)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
        model = get_peft_model(model, cfg)
    return model


def _full(t: torch.Tensor) -> torch.Tensor:
    full = getattr(t, "full_tensor", None)  # FSDP2 shards parameters and grads as DTensors
    return (full() if full is not None else t).detach().cpu().clone()


def train_step(ctx: DistContext, model_dir: str, strategy: str, lora: bool) -> dict[str, Any]:
    """One optimizer step on this rank's groups of the global batch, as the loop does it:
    token-mean loss normalised by the global token count, gradient accumulation over
    micro-batches with the all-reduce only on the last one, clip, AdamW step."""
    from verirl.algos import aggregate_loss, clipped_policy_loss, token_logprobs
    from verirl.train.model import forward_logits, pack

    model = load_model(model_dir, lora)
    if ctx.rank > 0:  # the wrap must start every rank from rank 0's weights
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
    model = wrap_model(model, ctx, strategy)
    named = [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for _, p in named], lr=1e-2)
    prompts, comps, adv = global_batch()
    rows = [g * GROUP_SIZE + j for g in shard_groups(GROUPS, ctx) for j in range(GROUP_SIZE)]
    batch = pack([prompts[i] for i in rows], [comps[i] for i in rows], 0, ctx.device)
    seq_adv = adv[rows].view(-1, 1) * batch.mask  # [B, T] a sequence advantage on its tokens
    n_tok = loss_normalizer(batch.mask.sum(), ctx)
    loss_sum, synced_early = 0.0, None
    for s0 in range(0, len(rows), MICRO):  # the all-reduce only in the last backward
        s, last = slice(s0, s0 + MICRO), s0 + MICRO >= len(rows)
        with no_sync_if(not last, model):
            mb = batch.slice(s)
            logits, _ = forward_logits(model, mb)
            logp = token_logprobs(logits, mb.targets)
            pg, _ = clipped_policy_loss(
                logp, logp.detach(), seq_adv[s, : logp.shape[1]], mb.mask, 0.2, 0.2
            )
            loss = aggregate_loss(pg, mb.mask, "token-mean", num_tokens=n_tok)
            loss.backward()
        loss_sum += float(loss.detach())
        if synced_early is None and not last and strategy == "ddp":
            # Under no_sync the ranks' gradients are still their own (different data).
            g = float(sum(p.grad.abs().sum() for _, p in named if p.grad is not None))
            everyone = gather_objects(g, ctx, to_all=True)
            assert everyone is not None
            synced_early = len(set(everyone)) == 1
    grads = {n: _full(p.grad) for n, p in named}
    grad_norm = clip_grad_norm([p for _, p in named], 1e9)
    opt.step()
    return {
        "loss": all_reduce_metrics({"loss": loss_sum}, ctx)["loss"],
        "grads": grads,
        "params": {n: _full(p) for n, p in named},
        "grad_norm": grad_norm,
        "synced_early": synced_early,
        "local_tokens": float(batch.mask.sum()),
        "model": model,
        "opt": opt,
    }


def fsdp2_generate(model: Any, ctx: DistContext) -> int:
    """HF generate on a sharded model: every decoding step all-gathers parameters, so ranks
    that stop at different lengths need ``synced_gpus=True`` (finished ranks keep stepping)."""
    n = 3 if ctx.rank == 0 else 7  # without synced_gpus rank 1 would wait forever on rank 0
    ids = torch.tensor([[5, 6, 7]])
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         synced_gpus=ctx.distributed, pad_token_id=0)  # fmt: skip
    return int(out.shape[1] - ids.shape[1])


def fsdp2_resume(model: Any, opt: Any, model_dir: str, out: Path, ctx: DistContext) -> bool:
    """Save full model+optimizer state (rank 0), load it into a fresh FSDP2 model on every
    rank: the resumed states equal the saved ones."""
    saved = {"model": full_state_dict(model, ctx), "opt": optimizer_state_dict(model, opt, ctx)}
    if ctx.is_main:
        torch.save(saved, out / "fsdp2-state.pt")
    barrier(ctx)
    state = torch.load(out / "fsdp2-state.pt", weights_only=False)
    fresh = wrap_model(load_model(model_dir, lora=False), ctx, "fsdp2")
    fresh_opt = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-2)
    load_full_state(fresh, fresh_opt, state["model"], state["opt"])
    again = {
        "model": full_state_dict(fresh, ctx),
        "opt": optimizer_state_dict(fresh, fresh_opt, ctx),
    }
    if not ctx.is_main:
        return True
    torch.testing.assert_close(again["model"], state["model"])
    torch.testing.assert_close(again["opt"]["state"], state["opt"]["state"])
    return bool(state["opt"]["state"])  # the step left Adam moments to restore


def worker(model_dir: str, out: Path) -> None:
    """Body of each torchrun rank: every check, results to out/rank<r>.json and out/*.pt."""
    ctx = init_distributed()
    res: dict[str, Any] = {"ctx": [ctx.rank, ctx.world_size, ctx.local_rank,
                                   ctx.local_world_size, ctx.device, ctx.backend]}  # fmt: skip
    for case in CASES:
        r = train_step(ctx, model_dir, case.split("_")[0], lora=case.endswith("lora"))
        res[f"{case}_local_tokens"] = r["local_tokens"]
        res[f"{case}_synced_early"] = r["synced_early"]
        if case == "fsdp2":  # all ranks call; rank 0 writes the gathered full model
            save_pretrained(r["model"], out / "fsdp2-saved", ctx)
            full = full_state_dict(r["model"], ctx, all_ranks=True)
            assert full is not None
            res["fsdp2_full_sum"] = float(sum(t.double().sum() for t in full.values()))
            res["fsdp2_generated"] = fsdp2_generate(r["model"], ctx)
            res["fsdp2_resumed"] = fsdp2_resume(r["model"], r["opt"], model_dir, out, ctx)
        if ctx.is_main:
            keep = {k: r[k] for k in ("loss", "grads", "params", "grad_norm")}
            torch.save(keep, out / f"{case}.pt")
        # DDP must have equal grads on every rank after the synced micro-step.
        gsum = float(sum(g.double().sum() for g in r["grads"].values()))
        res[f"{case}_grad_sums"] = gather_objects(gsum, ctx, to_all=True)
    # metric reduction: rank 0 has 1 sample at reward 1, rank 1 has 3 at reward 0
    n = 1 if ctx.rank == 0 else 3
    mine = {"reward_mean": 1.0 if ctx.rank == 0 else 0.0, "step_seconds": 1.0 + ctx.rank,
            f"status/{'correct' if ctx.rank == 0 else 'incorrect'}": float(n)}  # fmt: skip
    res["metrics"] = all_reduce_metrics(mine, ctx, counts=n)
    res["gathered"] = gather_objects({"rank": ctx.rank}, ctx)
    res["broadcast"] = broadcast_object(f"run-of-rank-{ctx.rank}", ctx)
    # PPO whitening over both ranks' rows equals whitening the whole batch
    g = torch.Generator().manual_seed(7)
    x, mask = torch.randn(4, 5, generator=g), (torch.rand(4, 5, generator=g) > 0.3).float()
    mine_rows = slice(2 * ctx.rank, 2 * ctx.rank + 2)
    res["whiten"] = global_masked_whiten(x[mine_rows], mask[mine_rows], ctx).tolist()
    # resume under 2 ranks: each rank gets its own RNG stream back
    torch.manual_seed(rank_seed(0, ctx))
    state = dist_state(ctx)
    if ctx.is_main:
        torch.save(state, out / "dist_state.pt")
    barrier(ctx)
    first = torch.rand(3).tolist()
    restore_dist_state(torch.load(out / "dist_state.pt", weights_only=False), ctx)
    res["rng"] = [first, torch.rand(3).tolist()]
    try:
        restore_dist_state({"world_size": 1}, ctx)
        res["resize_error"] = None
    except UserError as e:
        res["resize_error"] = str(e)
    res["shard"] = list(shard_groups(GROUPS, ctx))
    (out / f"rank{ctx.rank}.json").write_text(json.dumps(res))
    shutdown(ctx)


def vllm_worker(model_dir: str, out: Path) -> None:
    """Each rank: its own colocated vLLM engine samples its prompts; after one DDP step every
    rank pushes the (identical) new weights into its engine."""
    from transformers import AutoTokenizer

    from verirl.algos import aggregate_loss, token_logprobs
    from verirl.rollout.base import SamplingParams
    from verirl.rollout.vllm import VLLMRolloutEngine
    from verirl.train.model import forward_logits, pack

    ctx = init_distributed()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = wrap_model(load_model(model_dir, lora=False), ctx, "ddp")
    engine = VLLMRolloutEngine(model_dir, tokenizer=tok, kv_cache_gib=0.0625, max_num_seqs=16)
    prompts = ["1+1=", "12+30=", "7*6=", "5-2="]
    mine = [prompts[i] for i in shard_groups(len(prompts), ctx)]
    sampled = SamplingParams(max_new_tokens=6, temperature=1.0, seed=rank_seed(0, ctx))
    groups = engine.generate(mine, GROUP_SIZE, sampled)
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    before = engine.generate(["1+1="], 1, greedy)[0][0].logprobs
    # one step of likelihood on this rank's own samples (enough to move the weights)
    flat = [c for g in groups for c in g]
    batch = pack([c.prompt_token_ids for c in flat], [c.token_ids for c in flat], 0, "cpu")
    logits, _ = forward_logits(model, batch)
    nll = -token_logprobs(logits, batch.targets)
    aggregate_loss(
        nll, batch.mask, "token-mean", num_tokens=loss_normalizer(batch.mask.sum(), ctx)
    ).backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    engine.update_weights(unwrap(model))
    after = engine.generate(["1+1="], 1, greedy)[0][0]
    res = {"prompts": mine, "texts": [c.text for c in flat], "before": before,
           "after_ids": after.token_ids, "after": after.logprobs}  # fmt: skip
    everyone = gather_objects(res, ctx, to_all=True)
    if ctx.is_main:
        (out / "vllm.json").write_text(json.dumps(everyone))
    engine.close()
    shutdown(ctx)


def launch(model_dir: Path, out: Path, mode: str) -> None:
    """This file as the worker of 2 gloo ranks (torchrun, c10d rendezvous on a free port)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", __file__, mode, str(model_dir), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def rank_results(out: Path) -> list[dict[str, Any]]:
    """What ``worker`` wrote for rank 0 and rank 1."""
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


if __name__ == "__main__":  # torchrun worker: MODE MODEL_DIR OUT_DIR
    {"core": worker, "vllm": vllm_worker}[sys.argv[1]](sys.argv[2], Path(sys.argv[3]))
