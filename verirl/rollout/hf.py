"""HF ``generate`` rollouts: the engine that needs nothing but transformers.

The engine holds a reference to the policy module itself, so ``update_weights`` has nothing to
copy: the next ``generate`` already samples from the weights the optimizer just changed.

Logprobs are those of the model's own distribution (temperature 1, no top-k/top-p), the same
quantity the trainer recomputes, so the two can be compared token for token.
"""

from __future__ import annotations

from typing import Any

import torch

from verirl.rollout.base import Completion, RolloutEngine, SamplingParams


class HFRolloutEngine(RolloutEngine):
    def __init__(self, model: Any, tokenizer: Any, batch_size: int | None = None) -> None:
        """`batch_size` caps sequences per `generate` call (None: all at once)."""
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token")

    def update_weights(self, model: Any) -> float:
        self.model = model
        return 0.0

    @torch.no_grad()
    def generate(
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
                for c in self._generate_chunk([prompt_ids[i] for i, _ in chunk], sampling):
                    i, j = chunk[c.prompt_index]
                    c.prompt_index, c.sample_index = i, j
                    out[i].append(c)
        finally:
            self.model.train(was_training)
        return out

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
