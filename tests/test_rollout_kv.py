"""The hf engine's KV cache across turns: ``LeanDecoder.load``/``extend`` equal a full prefill
of the concatenation, multi-turn episodes with the cache give the tokens and logprobs they give
without it (which equal a teacher-forced forward), and keys and values of other weights are
never reused."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from verirl.envs.base import Environment, Row
from verirl.envs.multiturn import Episode, Turn
from verirl.rewards.result import RewardResult

from verirl.lean_model import LeanDecoder
from verirl.rollout.base import SamplingParams
from verirl.rollout.episodes import run_episodes
from verirl.rollout.hf import HFRolloutEngine


class EchoEnv(Environment):
    """Answers each model turn with a tool message of a length set by the row and the turn, so
    trajectories grow by different numbers of tokens; ends after ``turns`` model turns."""

    name = "test-echo"
    max_turns = 4
    fields = ("prompt",)

    def __init__(self, rows: Sequence[Row]) -> None:
        self._rows = list(rows)

    def rows(self, split: str = "train") -> Sequence[Row]:
        return self._rows

    def prompt(self, row: Row) -> str:
        return str(row["prompt"])

    def score(self, completion: str, row: Row) -> RewardResult:
        return RewardResult(float(bool(completion)), "correct" if completion else "incorrect")

    def respond(self, episode: Episode, text: str) -> Turn:
        if episode.turns >= episode.row["turns"]:
            return Turn(done=True)
        body = "x" * (episode.turns * len(episode.row["prompt"]))
        return Turn([{"role": "tool", "content": f"{episode.turns}:{body}"}], tool_calls=1)


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _last_logits(model, seq: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0, -1]


def _left(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (w - len(r)) + r for r in rows])
    valid = torch.tensor([[False] * (w - len(r)) + [True] * len(r) for r in rows])
    return ids, valid


def test_extend_on_a_loaded_cache_equals_a_full_prefill(policy):
    """Rows with cached prefixes of 3, 9 and 6 tokens and none, extended by 4, 1, 7 and 5
    tokens, then one decode step: logits equal transformers' forward of the whole sequence."""
    model, tok = policy
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 250, (n,), generator=g).tolist() for n in (7, 10, 13, 5)]
    cut = [3, 9, 6, 0]
    with torch.inference_mode():
        first = LeanDecoder(model, 3, 16)
        ids, valid = _left([s[:c] for s, c in zip(seqs[:3], cut, strict=False)], tok.pad_token_id)
        pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
        first.prefill(ids, valid, pos, torch.arange(3))
        w = ids.shape[1]
        kept = [first.take(b, torch.arange(w - c, w)) for b, c in enumerate(cut[:3])]
        assert [k.shape[3] for k in kept] == cut[:3]

        dec = LeanDecoder(model, 4, 32)
        for buf in (*dec.k, *dec.v):  # uninitialised memory may hold NaN: padding must not leak
            buf.fill_(float("nan"))
        dec.load([*kept, None])
        ids, valid = _left([s[c:] for s, c in zip(seqs, cut, strict=True)], tok.pad_token_id)
        pos = torch.tensor(cut)[:, None] + (valid.long().cumsum(-1) - 1).clamp(min=0)
        got = dec.extend(ids, valid, pos)
        nxt = got.argmax(-1)
        after = dec.step(nxt, torch.tensor([len(s) for s in seqs]))
    for b, s in enumerate(seqs):
        assert torch.allclose(got[b], _last_logits(model, s), atol=1e-5)
        assert torch.allclose(after[b], _last_logits(model, [*s, int(nxt[b])]), atol=1e-5)


def _continued(monkeypatch) -> list[int]:
    """The block widths of every ``extend`` onto a non-empty cache (a stored trajectory's next
    turn), recorded from now on."""
    widths: list[int] = []
    real = LeanDecoder.extend

    def extend(d: LeanDecoder, ids: torch.Tensor, *args: object) -> torch.Tensor:
        if d.len:
            widths.append(ids.shape[1])
        return real(d, ids, *args)

    monkeypatch.setattr(LeanDecoder, "extend", extend)
    return widths


def _env_runs(mask: list[int]) -> list[int]:
    """Lengths of the runs of 0 (environment tokens) in a mask."""
    out: list[int] = []
    for i, m in enumerate(mask):
        if m == 0 and i and mask[i - 1] == 0:
            out[-1] += 1
        elif m == 0:
            out.append(1)
    return out


def _run(engine, rows, sp, tok, n=2):
    env = EchoEnv(rows)
    return run_episodes(engine, env, rows, n, sp, tok, max_turns=4, max_tokens=400, batch_frac=1.0)


ROWS = [
    {"prompt": "a:", "turns": 3},
    {"prompt": "bbbb:", "turns": 4},
    {"prompt": "cc:", "turns": 1},
]


@pytest.mark.parametrize(
    "sp",
    [
        SamplingParams(8, temperature=0.0),
        SamplingParams(8, temperature=0.8, seed=4, stop=tuple("aeiouxyz")),
    ],
    ids=["greedy", "sampled-stop"],
)
def test_episodes_with_the_cache_equal_episodes_without_it(policy, monkeypatch, sp):
    """Turns after the first run only the tokens appended since the last (the environment's
    and the last sampled token); tokens equal, logprobs within 1e-5 of the uncached run and of
    a teacher-forced forward over the whole trajectory; the store is empty afterwards."""
    model, tok = policy
    widths = _continued(monkeypatch)
    ref = _run(HFRolloutEngine(model, tok, keep_kv=False), ROWS, sp, tok)
    assert widths == []
    engine = HFRolloutEngine(model, tok)
    got = _run(engine, ROWS, sp, tok)
    assert engine._kv == {}
    turns = [e.turns for e in got.episodes]
    if sp.stop:  # the stop-string path ran too: turns cut after a stop string
        assert any(t[-1:] in sp.stop for e in got.episodes for t in e.model_turns[:-1])
    assert turns == [e.turns for e in ref.episodes] and max(turns) >= 3
    assert len(widths) == max(turns) - 1  # every later call continued from the cache
    # call k runs, per episode still going, its turn k's last token and the k-th env message
    env_runs = [_env_runs(c.mask) for g in got.completions for c in g]
    want = [1 + max(r[k - 1] for r in env_runs if len(r) >= k) for k in range(1, len(widths) + 1)]
    assert widths == want
    for a, b in zip(ref.completions, got.completions, strict=True):
        for x, y in zip(a, b, strict=True):
            assert (y.token_ids, y.mask, y.text) == (x.token_ids, x.mask, x.text)
            assert max(abs(p - q) for p, q in zip(x.logprobs, y.logprobs, strict=True)) <= 1e-5
            full = torch.tensor([y.prompt_token_ids + y.token_ids])
            with torch.no_grad():
                z = model(full).logits[0, len(y.prompt_token_ids) - 1 : -1].float()
            tau = sp.temperature if sp.temperature > 0 else 1.0
            lp = torch.log_softmax(z / tau, -1).gather(-1, torch.tensor(y.token_ids)[:, None])[:, 0]  # fmt: skip
            m = torch.tensor(y.mask, dtype=torch.bool)
            assert float((lp[m] - torch.tensor(y.logprobs)[m]).abs().max()) <= 1e-5


def test_changed_weights_and_other_tokens_never_use_stored_keys_and_values(
    policy, tiny_model_dir, monkeypatch
):
    _, tok = policy
    extended = _continued(monkeypatch)
    copy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    engine, fresh = HFRolloutEngine(copy, tok), HFRolloutEngine(copy, tok, keep_kv=False)
    greedy = SamplingParams(5, temperature=0.0)
    p = tok("12+3=", add_special_tokens=False)["input_ids"]
    first = engine.generate_ids([p, p], 1, greedy, cache_keys=["a", "b"])
    assert set(engine._kv) == {"a", "b"}
    nxt = p + first[0][0].token_ids + tok(" ok", add_special_tokens=False)["input_ids"]

    def same(out):  # equal to an uncached engine's answer
        ref = fresh.generate_ids([nxt], 1, greedy)[0][0]
        assert (out[0][0].token_ids, out[0][0].finish_reason) == (ref.token_ids, ref.finish_reason)
        assert (
            max(abs(a - b) for a, b in zip(out[0][0].logprobs, ref.logprobs, strict=True)) <= 1e-5
        )

    # The stored tokens are a prefix of "a"'s next prompt: the cache is used.
    same(engine.generate_ids([nxt], 1, greedy, cache_keys=["a"]))
    assert len(extended) == 1
    # One call, "b" continuing (the same turn 1 as "a") and "new" not: "new" has an empty cache.
    both = engine.generate_ids([nxt, nxt], 1, greedy, cache_keys=["b", "new"])
    same(both[:1])
    same(both[1:])
    assert len(extended) == 2
    # "b"'s tokens are not a prefix of this prompt: a full prefill.
    other = tok("99*9=", add_special_tokens=False)["input_ids"]
    engine.generate_ids([other], 1, greedy, cache_keys=["b"])
    assert len(extended) == 2
    # Weights changed in place (an optimizer step, no update_weights): never the stale cache.
    engine.generate_ids([p], 1, greedy, cache_keys=["a"])
    with torch.no_grad():
        copy.lm_head.weight.mul_(1.5)
    same(engine.generate_ids([nxt], 1, greedy, cache_keys=["a"]))
    assert len(extended) == 2
    # update_weights drops the store; release and close drop keys.
    assert engine._kv
    engine.update_weights(copy)
    assert engine._kv == {}
    engine.generate_ids([p, p], 1, greedy, cache_keys=["a", "b"])
    engine.release(["a", "zz"])
    assert set(engine._kv) == {"b"}
    engine.close()
    assert engine._kv == {}
    with pytest.raises(ValueError, match="3 cache keys for 2 prompts x 1"):
        engine.generate_ids([p, p], 1, greedy, cache_keys=["a", "b", "c"])
