"""HF rollouts: the engine that needs nothing but transformers.

Sampling runs a lean decode loop over the model's forward with a KV cache (prefill once, then
one token per step, only the last position's logits computed) instead of ``generate``: for the
small models this engine serves, ``generate``'s per-token Python overhead (logits processors,
stopping criteria, output bookkeeping) costs more than the model itself. Requests with stop
strings use ``generate`` (its stop-string matching is exact across token boundaries).

The engine holds a reference to the policy module itself, so ``update_weights`` has nothing to
copy: the next ``generate`` already samples from the weights the optimizer just changed.

Logprobs are those of the model's own distribution (temperature 1, no top-k/top-p), the same
quantity the trainer recomputes, so the two can be compared token for token.
"""

from __future__ import annotations

from typing import Any

import torch

from verirl.rollout.base import Completion, RolloutEngine, SamplingParams
from verirl.rollout.fastdecode import FastDecoder


class HFRolloutEngine(RolloutEngine):
    def __init__(
        self, model: Any, tokenizer: Any, batch_size: int | None = None, synced: bool = False
    ) -> None:
        """`batch_size` caps sequences per `generate` call (None: all at once). `synced`: the
        model is sharded over ranks (FSDP2), so every forward is a collective: decoding runs
        all `max_new_tokens` steps on every rank (with stop strings, ``generate`` with
        ``synced_gpus``, which keeps finished ranks stepping until all are done)."""
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.synced = synced
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token")

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
        sequence has emitted EOS. Sampling draws from the global torch RNG (seedable and
        checkpointed by the trainer)."""
        tok, model = self.tokenizer, self.model
        width = max(len(x) for x in ids)
        pad, eos = tok.pad_token_id, tok.eos_token_id
        device = next(model.parameters()).device
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
        att = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
        pos = (att.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at 0
        fast = FastDecoder.maybe(model, len(ids), width + sampling.max_new_tokens)
        if fast is not None:
            logits = fast.forward(input_ids, att.bool(), pos)
        else:
            out = model(input_ids=input_ids, attention_mask=att, position_ids=pos,
                        use_cache=True, logits_to_keep=1)  # fmt: skip
            cache, logits = out.past_key_values, out.logits[:, -1]
        nxt_pos = pos[:, -1:] + 1
        done = torch.zeros(len(ids), dtype=torch.bool, device=device)
        toks, lps = [], []
        for t in range(sampling.max_new_tokens):
            logits = logits.float()  # [B, V]
            new = _sample(logits, sampling).masked_fill(done, pad)  # [B]
            lp = torch.log_softmax(logits, -1).gather(-1, new[:, None]).squeeze(-1)
            toks.append(new)
            lps.append(lp)
            done = done | (new == eos)
            # Synced (sharded model): every rank runs the same number of forwards (collectives).
            if (bool(done.all()) and not self.synced) or t + 1 == sampling.max_new_tokens:
                break
            if fast is not None:
                logits = fast.forward(new[:, None], torch.ones_like(done[:, None]), nxt_pos)
            else:
                att = torch.cat([att, torch.ones_like(att[:, :1])], dim=-1)
                out = model(input_ids=new[:, None], attention_mask=att, position_ids=nxt_pos,
                            past_key_values=cache, use_cache=True)  # fmt: skip
                logits = out.logits[:, -1]
            nxt_pos = nxt_pos + 1
        tok_mat = torch.stack(toks, 1).tolist()  # [B, T]
        lp_mat = torch.stack(lps, 1).tolist()
        results = []
        for b, row in enumerate(tok_mat):
            length, finish = len(row), "length"
            if eos in row:
                length, finish = row.index(eos) + 1, "stop"
            body = row[:length]
            text = tok.decode(body[:-1] if finish == "stop" else body, skip_special_tokens=False)
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
            eos_token_id=tok.eos_token_id,
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
        logp = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        results = []
        for b in range(new.shape[0]):
            toks = new[b].tolist()
            length, finish = len(toks), "length"
            for t, token in enumerate(toks):
                if token == tok.eos_token_id:
                    length, finish = t + 1, "stop"
                    break
            body = toks[:length]
            text = tok.decode([t for t in body if t != tok.eos_token_id], skip_special_tokens=False)
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


def _sample(logits: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """One token per row from `logits` [B, V]: greedy at temperature 0, else temperature, then
    top-k, then nucleus (top-p) filtering, as transformers' warpers apply them."""
    if sampling.temperature <= 0:
        return logits.argmax(-1)
    logits = logits / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= sampling.top_p  # keep the token crossing p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1).squeeze(-1)
