"""HF rollouts: the engine that needs nothing but transformers.

Sampling runs a decode loop with a KV cache (prefill once, then one token per step, only the
last position's logits computed) instead of ``generate``: for small models, ``generate``'s
per-token Python overhead (logits processors, stopping criteria, output bookkeeping) costs more
than the model itself. Each step runs ``verirl.lean_model.LeanDecoder`` where the lean path is
chosen (``lean``; by default on CPU for supported models) and the model's own forward with its
cache otherwise (CUDA: its SDPA/flash attention). Requests with stop strings use ``generate``
(its stop-string matching is exact across token boundaries).

The engine holds a reference to the policy module itself, so ``update_weights`` has nothing to
copy: the next ``generate`` already samples from the weights the optimizer just changed.

Logprobs are log softmax(z / T) at the sampling temperature T (``logprob_temperature``; top-k
and top-p not renormalised), the same quantity the trainer recomputes, so the two can be
compared token for token. Sequences end on any of ``end_token_ids`` (the tokenizer's EOS and
the model's ``generation_config.eos_token_id`` list), as vLLM's do.
"""

from __future__ import annotations

from typing import Any

import torch

from verirl.lean_model import LeanDecoder, is_plain, lean_by_default
from verirl.rollout.base import (
    Completion,
    RolloutEngine,
    SamplingParams,
    end_token_ids,
    logprob_temperature,
)


class HFRolloutEngine(RolloutEngine):
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int | None = None,
        synced: bool = False,
        lean: bool | None = None,
    ) -> None:
        """`batch_size` caps sequences per `generate` call (None: all at once). `synced`: the
        model is sharded over ranks (FSDP2), so every forward is a collective: decoding runs
        all `max_new_tokens` steps on every rank (with stop strings, ``generate`` with
        ``synced_gpus``, which keeps finished ranks stepping until all are done). `lean`:
        decode with ``LeanDecoder`` (True), the model's own forward (False), or decide by
        ``lean_by_default`` (None: CPU, float32/bfloat16, supported architecture)."""
        self.model = model
        self.lean = lean
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.synced = synced
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token")
        self.end_ids = end_token_ids(tokenizer, getattr(model, "generation_config", None))

    def update_weights(self, model: Any) -> float:
        self.model = model
        return 0.0

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        # FSDP2 reuses its all-gather buffers in training: they must not become inference tensors.
        with torch.no_grad() if self.synced else torch.inference_mode():
            return self._generate(prompts, n, sampling)

    def _generate(
        self, prompts: list[str], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        tok = self.tokenizer
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        flat = [(i, j) for i in range(len(prompts)) for j in range(n)]
        step = self.batch_size or len(flat)
        out: list[list[Completion]] = [[] for _ in prompts]
        was_training = self.model.training
        # The lean decoder applies no dropout whatever the mode; the model's own forward
        # (``generate``, unsupported architectures) must run in eval mode.
        if sampling.stop or not self._lean():
            self.model.eval()
        try:
            for start in range(0, len(flat), step):
                chunk = flat[start : start + step]
                fn = self._generate_chunk if sampling.stop else self._decode_chunk
                for c in fn([prompt_ids[i] for i, _ in chunk], sampling):
                    i, j = chunk[c.prompt_index]
                    c.prompt_index, c.sample_index = i, j
                    out[i].append(c)
        finally:
            self.model.train(was_training)
        return out

    def _decode_chunk(self, ids: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """Left-padded prefill, then a token per step with the KV cache; stops when every
        sequence has emitted an end token. Sampling draws from the global torch RNG (seedable
        and checkpointed by the trainer)."""
        tok, model = self.tokenizer, self.model
        width = max(len(x) for x in ids)
        pad, tau = tok.pad_token_id, logprob_temperature(sampling.temperature)
        device = next(model.parameters()).device
        fast = (
            LeanDecoder(model, len(ids), width + sampling.max_new_tokens) if self._lean() else None
        )
        # The fast path prefills each distinct prompt once (n samples share its keys/values).
        distinct: dict[tuple[int, ...], int] = {}
        rows = [distinct.setdefault(tuple(x), len(distinct)) for x in ids]
        run = [list(x) for x in distinct] if fast is not None else ids
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in run], device=device)
        att = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in run], device=device)
        pos = (att.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at 0
        if fast is not None:
            index = torch.tensor(rows, device=device)
            logits = fast.prefill(input_ids, att.bool(), pos, index)
            pos = pos[index]
        else:
            out = model(input_ids=input_ids, attention_mask=att, position_ids=pos,
                        use_cache=True, logits_to_keep=1)  # fmt: skip
            cache, logits = out.past_key_values, out.logits[:, -1]
        nxt_pos = pos[:, -1] + 1  # [B]
        done = torch.zeros(len(ids), dtype=torch.bool, device=device)
        ends = torch.tensor(self.end_ids, device=device)
        toks = torch.full((len(ids), sampling.max_new_tokens), pad, device=device)  # [B, T]
        lps = torch.zeros((len(ids), sampling.max_new_tokens), device=device)
        steps = 0
        for t in range(sampling.max_new_tokens):
            z = logits.float()
            logp = torch.log_softmax(z / tau if tau != 1.0 else z, -1)  # [B, V] softmax(z/T)
            new = _sample(logp, sampling).masked_fill_(done, pad)  # [B]
            toks[:, t] = new
            lps[:, t] = logp.gather(-1, new[:, None])[:, 0]
            done |= torch.isin(new, ends)
            steps = t + 1
            # Synced (sharded model): every rank runs the same number of forwards (collectives).
            if (bool(done.all()) and not self.synced) or steps == sampling.max_new_tokens:
                break
            if fast is not None:
                logits = fast.step(new, nxt_pos)
            else:
                att = torch.cat([att, torch.ones_like(att[:, :1])], dim=-1)
                out = model(input_ids=new[:, None], attention_mask=att,
                            position_ids=nxt_pos[:, None], past_key_values=cache,
                            use_cache=True)  # fmt: skip
                logits = out.logits[:, -1]
            nxt_pos = nxt_pos + 1
        tok_mat = toks[:, :steps].tolist()
        lp_mat = lps[:, :steps].tolist()
        stops = [_end(row, self.end_ids) for row in tok_mat]
        bodies = [row[: n - (f == "stop")] for row, (n, f) in zip(tok_mat, stops, strict=True)]
        texts = tok.batch_decode(bodies, skip_special_tokens=False)  # without the end token
        results = []
        for b, (row, (length, finish), text) in enumerate(zip(tok_mat, stops, texts, strict=True)):
            body = row[:length]
            results.append(
                Completion(
                    prompt_index=b,
                    sample_index=0,
                    text=text,
                    prompt_token_ids=ids[b],
                    token_ids=body,
                    logprobs=lp_mat[b][:length],
                    finish_reason=finish,
                )
            )
        return results

    def _lean(self) -> bool:
        if self.lean is None:
            return lean_by_default(self.model)
        return self.lean and is_plain(self.model)

    def _generate_chunk(self, ids: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        tok = self.tokenizer
        width = max(len(x) for x in ids)
        pad = tok.pad_token_id
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
        attention = torch.tensor(
            [[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device
        )
        do_sample = sampling.temperature > 0
        kwargs: dict[str, Any] = dict(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=do_sample,
            pad_token_id=pad,
            eos_token_id=self.end_ids,
            return_dict_in_generate=True,
            output_logits=True,
            use_cache=True,
            synced_gpus=self.synced,
        )
        if do_sample:
            kwargs.update(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k or None,
            )
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=tok)
        gen = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        new = gen.sequences[:, width:]  # [B, T_new]
        logits = torch.stack(gen.logits, dim=1).float()  # [B, T_new, V], raw (unprocessed)
        tau = logprob_temperature(sampling.temperature)
        logp = torch.log_softmax(logits / tau, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        results = []
        for b in range(new.shape[0]):
            toks = new[b].tolist()
            length, finish = _end(toks, self.end_ids)
            body = toks[:length]
            text = tok.decode(body[: length - (finish == "stop")], skip_special_tokens=False)
            for s in sampling.stop:
                if s in text:
                    text, finish = text[: text.index(s) + len(s)], "stop"
            results.append(
                Completion(
                    prompt_index=b,
                    sample_index=0,
                    text=text,
                    prompt_token_ids=ids[b],
                    token_ids=body,
                    logprobs=logp[b, :length].tolist(),
                    finish_reason=finish,
                )
            )
        return results


def _end(row: list[int], end_ids: list[int]) -> tuple[int, str]:
    """(tokens kept, finish reason): up to and including the first end token, else all."""
    for t, token in enumerate(row):
        if token in end_ids:
            return t + 1, "stop"
    return len(row), "length"


def _sample(logp: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """One token per row from `logp` [B, V] = log softmax(z / T): greedy at temperature 0, else
    top-k, then nucleus (top-p) filtering of the tempered distribution, as transformers' warpers
    apply them (temperature first)."""
    if sampling.temperature <= 0:
        return logp.argmax(-1)
    top_k = sampling.top_k if sampling.top_k and sampling.top_k < logp.shape[-1] else 0
    if not top_k and sampling.top_p >= 1.0:
        return _draw(logp.exp())  # the tempered distribution itself
    logits = logp
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= sampling.top_p  # keep the token crossing p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return _draw(logits.softmax(-1))


def _draw(probs: torch.Tensor) -> torch.Tensor:
    """Inverse-transform sampling, one uniform draw per row: the first v with
    CDF(v) > u·CDF(V) (float64 CDF, so rounding cannot skew rare tokens). Same distribution as
    ``torch.multinomial(probs, 1)``, whose CPU kernel draws an exponential per vocabulary entry
    and costs more than a small model's whole decode step."""
    cdf = probs.double().cumsum(-1)  # [B, V]
    total = cdf[:, -1:]  # [B, 1]
    u = torch.rand(total.shape, dtype=cdf.dtype, device=cdf.device) * total
    # u < CDF(V) strictly (the product can round up to it), so the token found has p > 0:
    # a token of probability 0 (top-k/top-p) has CDF(v) = CDF(v−1) and is never the first > u.
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)
