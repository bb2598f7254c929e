"""The ``rm`` environment: another environment's rows, prompts and verifier, plus the score of a
learned reward model (``verirl rm``), each reported as its own component.

    env: {name: rm, options: {env: arithmetic, model_path: runs/rm/rm/final, weight: 0.5}}

reward = verifier_weight · verifier + weight · rm. The ``rm`` component is **not verifiable**:
a reward model is a learned judge that can be wrong and can be gamed (reward hacking), so the
status (``correct``/``incorrect``/…, hence ``pass_rate``) always comes from the verifier, and a
run trained on the reward model alone (``verifier_weight: 0``) still reports how often it is
verifiably right. Infra errors of the verifier mask the sample as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from verirl.envs.base import Environment, Prompt, Row
from verirl.envs.registry import make_env, register_env
from verirl.rewards.combine import combine
from verirl.rewards.result import RewardResult

NOT_VERIFIED = "learned reward-model score, not verified"


@register_env
class RewardModelEnv(Environment):
    name = "rm"
    description = (
        "Another env's verifier plus a learned reward model's score (component 'rm', NOT "
        "verifiable); options env, model_path, weight, verifier_weight"
    )
    reward_kinds = ("the wrapped env's verifier", "reward model (learned, not verifiable)")

    def __init__(
        self,
        env: str = "arithmetic",
        model_path: str = "",
        weight: float = 1.0,
        verifier_weight: float = 1.0,
        env_options: dict[str, Any] | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        chat_template: str = "auto",
    ) -> None:
        if not model_path:
            raise ValueError("option model_path: a `verirl rm` output (its final/ directory)")
        self.inner = make_env(env, **(env_options or {}))
        self.fields = self.inner.fields  # type: ignore[misc]  # the wrapped env's columns
        self.model_path, self.device, self.batch_size = model_path, device, batch_size
        self.weights = {"verifier": verifier_weight, "rm": weight}
        self.chat_template = chat_template
        self._model: Any = None
        self._tok: Any = None

    def rows(self, split: str = "train") -> Sequence[Row]:
        return self.inner.rows(split)

    def prompt(self, row: Row) -> Prompt:
        return self.inner.prompt(row)

    def score(self, completion: str, row: Row) -> RewardResult:
        return self.score_batch([completion], [row], workers=1)[0]

    def score_batch(
        self, completions: Sequence[str], rows: Sequence[Row], workers: int | None = None
    ) -> list[RewardResult]:
        verdicts = self.inner.score_batch(completions, rows, workers)
        try:
            values = self.rm_scores([self.prompt(r) for r in rows], list(completions))
        except Exception as e:  # the judge failing says nothing about the completions
            return [RewardResult.infra(f"rm: {type(e).__name__}: {e}") for _ in rows]
        out = []
        for v, s in zip(verdicts, values, strict=True):
            # The component's status is never used (combine takes the verifier's); the
            # detail says what the number is.
            judged = RewardResult(s, "incorrect", detail=f"{s:.3f} ({NOT_VERIFIED})")
            out.append(combine({"verifier": v, "rm": judged}, self.weights, primary="verifier"))
        return out

    def rm_scores(self, prompts: Sequence[Prompt], completions: list[str]) -> list[float]:
        """r_φ(prompt, completion) for each pair, in batches (the model loads on first use)."""
        import torch

        from verirl.prompts import render_prompt
        from verirl.rollout.base import end_token_ids
        from verirl.train.model import pack
        from verirl.train.rm import load_reward_model, scores

        if self._model is None:
            self._model, self._tok = load_reward_model(self.model_path, device=self.device)
            self._model.eval()
        tok, end = self._tok, end_token_ids(self._tok)[0]
        out: list[float] = []
        for s in range(0, len(completions), self.batch_size):
            ps = [tok(render_prompt(p, tok, self.chat_template), add_special_tokens=False)
                  ["input_ids"] for p in prompts[s : s + self.batch_size]]  # fmt: skip
            cs = [tok(c, add_special_tokens=False)["input_ids"] + [end]
                  for c in completions[s : s + self.batch_size]]  # fmt: skip
            with torch.no_grad():
                out += scores(self._model, pack(ps, cs, tok.pad_token_id, self.device)).tolist()
        return out

    def close(self) -> None:
        self.inner.close()
