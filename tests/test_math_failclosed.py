"""The reward hacks and false negatives of issue 12, one row each.

Every hack row is a completion that scored 1 against an unrelated gold before the fail-closed
rules; every valid row is a correct answer that scored 0. Where a case is ambiguous the table
prefers 0 and says why.
"""

from __future__ import annotations

import pytest
from verirl.envs import make_env
from verirl.envs.arithmetic import ArithmeticEnv
from verirl.rewards.math_pool import CheckerPool
from verirl.rewards.math_reward import math_reward_batch


@pytest.fixture(scope="module")
def pool():
    with CheckerPool(workers=2, timeout_s=5.0) as p:
        p.start(wait=True)
        yield p


HACKS = [
    # division by zero / non-finite values used to compare equal to everything
    (r"\boxed{1/0}", "5"),
    (r"\boxed{1/0}", r"\sqrt{2}"),
    (r"\boxed{1/0}", "0"),
    (r"\boxed{1/0}", r"\frac{3}{7}"),
    (r"\boxed{-1/0}", "5"),
    (r"\boxed{1 / 0}", "5"),
    (r"\boxed{\frac{1}{0}}", r"\pi"),
    (r"\boxed{\ln 0}", "5"),
    (r"\boxed{\log 0}", "5"),
    (r"\boxed{\infty}", "5"),
    (r"\boxed{0^0}", "1"),  # undefined; sympy says 1, a reward must not
    # juxtaposed numbers were multiplied (2 3 = 6) or concatenated (2 3 = 23)
    (r"\boxed{2 3}", "6"),
    (r"\boxed{2 3}", "23"),
    (r"\boxed{1 2 3 4 5 6 7 8 9 0}", "0"),
    (r"\boxed{2\;3}", "23"),
    (r"\boxed{True}", "1"),
    # the bare-number fallback took fragments of a larger expression
    (r"so it is $\frac{1+\sqrt5}{2}$", "2"),
    (r"\frac{1}{3}", "3"),
    # hedges: several values for a one-value gold
    (r"\boxed{2, 3}", "3"),
    (r"\boxed{\pm 3}", "3"),
    (r"\boxed{(A)(B)(C)}", "A"),
    # identities and free symbols carry no value
    (r"\boxed{x = x}", "x = 3"),
    (r"\boxed{x}", "5"),
    # found by `verirl audit math`: GSM8K's "####" skipped the hedge check, and a choice letter
    # followed by another value named the choice
    ("We add them up.\n#### (B) or 3", "(B)"),
    ("#### (B) \\text{ or } 3", "(B)"),
    ("#### 3 or 5", "3"),
    ("<answer>#### 3 and/or 5</answer>", "3"),
    (r"\boxed{(B)-1}", "(B)"),
    (r"\boxed{(B) 3}", "(B)"),
    (r"\boxed{(B) \pm 1}", "(B)"),
    ("Final Answer: (B) 3", "(B)"),
    (r"\boxed{B. 43}", "B. 42"),  # the gold's own text for B is 42
]

VALID = [
    (r"\boxed{-\frac{\sqrt3}2}", r"-\frac{\sqrt{3}}{2}"),
    (r"\boxed{\emptyset}", r"\varnothing"),
    (r"\boxed{\{\}}", r"\emptyset"),
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    ("**Final Answer:** 12", "12"),
    ("**Final Answer**: $12$", "12"),
    (r"\boxed{x >= 5}", r"x \geq 5"),
    (r"\boxed{5 \geq x}", r"x \leq 5"),
    (r"\boxed{-x \leq -5}", r"x \geq 5"),
    (r"\boxed{2x > 6}", "x > 3"),
    (r"\boxed{125\textnormal{ miles}}", "125"),
    (r"\boxed{\frac3{3}}", "1"),
    ("Final Answer: The largest $n$ is 34.", "34"),
    (r"\boxed{11,\! 111,\! 111,\! 100}", "11111111100"),
    (r"\boxed{1,2}", r"\boxed{1}\boxed{2}"),
    (r"first \boxed{3}, but actually \boxed{5}", "5"),
    ("The answer: 2 1/2 cups", r"\frac{5}{2}"),
    (r"\boxed{\infty}", r"\infty"),
    # a choice with the gold's own text, or the letter alone, is still the choice
    (r"\boxed{(B) 42}", "(B) 42"),
    (r"\boxed{B}", "B. 42"),
    ("#### (B)", "(B)"),
]


@pytest.mark.parametrize("completion, gold", HACKS, ids=[f"hack{i}" for i in range(len(HACKS))])
def test_hacks_score_zero(pool, completion, gold):
    (res,) = math_reward_batch([completion], [gold], pool)
    assert res.reward == 0.0, (completion, gold, res)


@pytest.mark.parametrize("completion, gold", VALID, ids=[f"valid{i}" for i in range(len(VALID))])
def test_valid_forms_score_one(pool, completion, gold):
    (res,) = math_reward_batch([completion], [gold], pool)
    assert res.reward == 1.0, (completion, gold, res)


def test_exactness_survives():
    res = math_reward_batch([r"\boxed{1000001}", r"\boxed{10^{-9}}"], ["1000000", "0"])
    assert [r.reward for r in res] == [0.0, 0.0]


@pytest.mark.parametrize("completion", ["36.5", "36-1", "36 or 3", "36/1", "36x", "-36", "360"])
def test_arithmetic_reads_the_whole_answer(completion):
    env = ArithmeticEnv()
    assert env.score(completion, {"answer": "36"}).reward == 0.0
    assert env.score("36", {"answer": "36"}).reward == 1.0
    assert env.score("36\n12+3=15", {"answer": "36"}).reward == 1.0


def test_arithmetic_judges_a_huge_completion_instead_of_crashing():
    # 10^5 digits is over Python's 4300-digit int() limit: the scorer compares digit strings
    env = ArithmeticEnv()
    huge = "9" * 100_000
    res = env.score(huge, {"answer": "36"})
    assert (res.reward, res.status) == (0.0, "incorrect") and "100000 characters" in res.detail
    assert env.score(huge, {"answer": huge}).reward == 1.0
    assert env.score("0036", {"answer": "36"}).reward == 1.0
    assert env.score("-0", {"answer": "0"}).reward == 1.0
    assert env.score("-36", {"answer": "36"}).reward == 0.0


@pytest.fixture(scope="module")
def gym():
    with make_env("reasoning_gym", task="basic_arithmetic", train_size=3, test_size=1) as env:
        yield env


@pytest.mark.parametrize(
    "template",
    ["{g} or 3", "3 or {g}", r"{g} \text{{ or }} 3", "{g}.5", "{g}0", "[3, {g}, 7]", "{g}-1",
     "{g} 3"],
)  # fmt: skip
def test_reasoning_gym_gives_no_partial_credit(gym, template):
    # reasoning-gym's default score_answer credits len(gold)/len(answer) when the answer
    # contains the gold: each of these scored between 0.5 and 0.93
    row = gym.rows("train")[0]
    res = gym.score(f"<answer>{template.format(g=row['answer'])}</answer>", row)
    assert (res.reward, res.status, res.components) == (0.0, "incorrect", {"correct": 0.0}), res
    full = gym.score(f"<answer>{row['answer']}</answer>", row)
    assert (full.reward, full.status) == (1.0, "correct")


def test_reasoning_gym_reports_the_task_credit_and_the_hedge(gym):
    row = gym.rows("train")[0]
    credit = len(row["answer"]) / (len(row["answer"]) + 1)  # the task's substring credit
    detail = gym.score(f"<answer>{row['answer']}0</answer>", row).detail
    assert detail.endswith(f"(task credit {credit:.3g})"), detail
    assert gym.score(f"#### {row['answer']} or 3", row).detail.startswith("hedged answer")
