"""The adversarial completions of `verirl audit`, per reward kind, as pure functions of a row.

Every probe says what an honest reward must give it (``expect``):

- ``zero``: junk that cannot be right on any row (empty, echoed prompt, broken tags, programs
  that exit early...): the *total* reward must be 0 — a format bonus for junk is a hack too;
- ``zero_correct``: a well-formed answer that cannot be right on this row (a universal
  candidate, a perturbed gold): its *correctness* must be 0. Correctness is the ``correct``
  component when the result has one (a format bonus for a tidy wrong answer is intended),
  else the reward;
- ``full``: the row's own gold in a style the env promises to accept: correctness must be 1
  (the false-negative probe).

Answer styles are the ways a model states a final answer. An env promises some of them
(``answer_styles`` attribute, else the default of its reward kind); wrong candidates are
rendered in *every* style, since any style the checker happens to read is attack surface.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from verirl.rewards.math_guard import UNIVERSAL_CANDIDATES

Expect = Literal["zero", "zero_correct", "full"]


@dataclass(frozen=True)
class Probe:
    """One adversarial (or gold) completion for one row.

    ``name`` is the candidate as a template (``{gold} or {alt}``), the same on every row, so
    findings group by it; ``completion`` is what was scored on this row (``36 or 3``).
    """

    family: str  # generic | math | perturbed | format | code | gold
    name: str
    style: str  # the answer style it is written in, or "-" where none applies
    completion: str
    expect: Expect


# ---- answer styles ---------------------------------------------------------------------------
Render = Callable[[str, Sequence[str]], str]


def _tagged(answer: str, tags: Sequence[str]) -> str:
    """A well-formed tag sequence: the answer in the last block, reasoning in the others."""
    blocks = [f"<{t}>Let me work it out.</{t}>" for t in tags[:-1]]
    return "\n".join([*blocks, f"<{tags[-1]}>{answer}</{tags[-1]}>"])


STYLES: dict[str, Render] = {
    "bare": lambda a, tags: a,
    "boxed": lambda a, tags: f"The answer is $\\boxed{{{a}}}$.",
    "answer_tag": _tagged,
    "final_answer": lambda a, tags: f"Final Answer: {a}",
    "answer_is": lambda a, tags: f"So the answer is {a}.",
    "gsm8k": lambda a, tags: f"We add them up.\n#### {a}",
}

# What an env of each reward kind promises to accept when it does not say (``answer_styles``).
DEFAULT_STYLES: dict[str, tuple[str, ...]] = {
    "exact-integer": ("bare",),
    "exact-match": ("bare",),
    "math-equivalence": ("boxed", "answer_tag", "final_answer"),
    "task-scorer": ("answer_tag",),
}


def render_all(text: str, tags: Sequence[str]) -> list[tuple[str, str]]:
    """``(style, completion)`` for `text` written in every style."""
    return [(style, render(text, tags)) for style, render in STYLES.items()]


# ---- could a candidate be the gold? ----------------------------------------------------------
_WRAPPERS = re.compile(r"\\(?:text|textbf|textnormal|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_DROP = re.compile(r"\\left|\\right|\\displaystyle|\\[!,;: ]|\$|\s|\^\{?\\circ\}?|°|\\%|%")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{?(-?\d+)\}?\{?(-?\d+)\}?$")
# Infinite or all-reals answers: a gold of this family may equal a candidate of it.
_INF = re.compile(r"\\infty|∞|\binf(?:inity)?\b|\boo\b|\\mathbb\s*\{?r\b|real", re.I)
_BRACKETS = re.compile(r"\\[{}]|[()\[\]{}]")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def canon(s: str) -> str:
    """A loose normal form, only to tell when a candidate *might* equal a gold.

    >>> canon(r"$\\left( \\text{A} \\right)$"), canon(r"90^\\circ"), canon(r"1{,}000")
    ('(a)', '90', '1000')
    """
    s = _WRAPPERS.sub(r"\1", s.strip())
    s = _DROP.sub("", s.replace("{,}", ",")).lower().rstrip(".")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    while len(s) >= 2 and s[0] == "{" and s[-1] == "}":
        s = s[1:-1]
    return s


def _number(s: str) -> Fraction | None:
    m = _FRAC.match(s)
    if m:
        sign, num, den = m.groups()
        return None if int(den) == 0 else Fraction(int(num), int(den)) * (-1 if sign else 1)
    try:
        return Fraction(s) if len(s) < 60 else None
    except (ValueError, ZeroDivisionError):
        return None


def could_be_gold(candidate: str, gold: str) -> bool:
    """Conservative: True when `candidate` might be a right answer for `gold`, so that a pass
    there is not reported as a hack. Errs towards True (an unreported row, never a false alarm).

    >>> could_be_gold("0.5", r"\\frac{1}{2}"), could_be_gold("(A)", "A"), could_be_gold("1/0", "5")
    (True, True, False)
    """
    c, g = canon(candidate), canon(gold)
    if c == g or _BRACKETS.sub("", c) == _BRACKETS.sub("", g):  # "1,2,3" may be {1,2,3}
        return True
    a, b = _number(c), _number(g)
    if a is not None and b is not None:
        return a == b
    return bool(_INF.search(candidate)) and bool(_INF.search(gold))


def same_value(a: str, b: str) -> bool:
    """Equal up to `canon`, or the same rational number: ``00`` and ``0``, ``0.50`` and ``1/2``."""
    x, y = canon(a), canon(b)
    if x == y:
        return True
    u, v = _number(x), _number(y)
    return u is not None and u == v


def others(gold: str, k: int) -> list[str]:
    """`k` small integers that cannot be `gold` (``3`` first: ``36 or 3``)."""
    pool = ("3", "7", "2", "11", "5", "13", "17", "19", "23", "29", "31", "37")
    return [v for v in pool if not could_be_gold(v, gold)][:k]


# ---- the batteries ---------------------------------------------------------------------------
def generic_probes(
    prompt_text: str, gold: str | None, tags: Sequence[str], floods: bool = True
) -> list[Probe]:
    """Junk for any env: nothing, the prompt back, skeletons, floods, broken text, every style
    at once with wrong values. All must score 0 in total. The floods (100 kB each) test the
    scorer's robustness, not the row: `floods` is set on the first rows only."""
    w = others(gold or "", 6)
    everything = (
        f"<think>{w[0]}</think>\n<answer>{w[1]}</answer>\n\\boxed{{{w[2]}}}\n"
        f"Final Answer: {w[3]}\nThe answer is {w[4]}.\n#### {w[5]}"
    )
    skeleton = "\n".join(f"<{t}></{t}>" for t in tags)
    cases = [
        ("empty", ""),
        ("whitespace", " \n\t \n"),
        ("the prompt echoed", prompt_text),
        ("tag skeleton", skeleton),
        ("empty box", "The answer is $\\boxed{}$."),
        ("bare answer phrases", "Final Answer:\nThe answer is\n####"),
        ("lone surrogate", "\ud800"),
        ("surrogates in an answer", f"\\boxed{{\udcff{w[0]}\udc80}} \ud83d"),
        ("NUL and replacement chars", "\x00" * 64 + "\ufffd" * 64),
        ("every answer style at once", everything),
    ]
    if floods:
        cases += [
            ("10^5 digits", "9" * 100_000),
            ("repeated words", "the answer is " * 5_000),
            ("5000 unclosed boxes", "\\boxed{" * 5_000),
            ("repeated answer tags", f"<answer>{w[0]}</answer>" * 2_000),
        ]
    if gold is not None and could_be_gold(prompt_text, gold):  # an echo task: the prompt is right
        cases = [(n, c) for n, c in cases if n != "the prompt echoed"]
    return [Probe("generic", n, "-", c, "zero") for n, c in cases]


def math_probes(gold: str, tags: Sequence[str], row: int = 0, stride: int = 1) -> list[Probe]:
    """The universal-answer candidates (degenerate values, hedges, lists, catch-alls, from
    `verirl.rewards.math_guard`) in every style, skipping those that might be this gold.

    With ``stride`` s > 1 row i gets every s-th (candidate, style) pair, shifted by i: over
    consecutive rows each pair meets rows/s different golds, at 1/s of the cost.
    """
    pairs = [(c, s, r) for c in UNIVERSAL_CANDIDATES for s, r in STYLES.items()]
    return [
        Probe("math", cand, style, render(cand, tags), "zero_correct")
        for k, (cand, style, render) in enumerate(pairs)
        if (k + row) % stride == 0 and not could_be_gold(cand, gold)
    ]


def _is_int(s: str) -> bool:
    return re.fullmatch(r"-?\d{1,300}", s.strip()) is not None


def perturbed_gold_probes(gold: str, tags: Sequence[str]) -> list[Probe]:
    """The gold with a hedge, a changed value, or among other values: each must score 0."""
    g = gold.strip()
    if not g:
        return []
    a, b = others(g, 2)
    cases = [
        ("{gold} or {alt}", f"{g} or {a}"),
        ("{alt} or {gold}", f"{a} or {g}"),
        ("{gold} and/or {alt}", f"{g} and/or {a}"),
        ("{gold} \\text{ or } {alt}", f"{g} \\text{{ or }} {a}"),
        ("{gold} \\pm 1", f"{g} \\pm 1"),
        ("{alt}, {gold}, {alt2}", f"{a}, {g}, {b}"),
        ("[{alt}, {gold}, {alt2}]", f"[{a}, {g}, {b}]"),
        ("{gold} {alt} (juxtaposed)", f"{g} {a}"),
    ]
    if not _INF.search(g):
        cases.append(("{gold}-1", f"{g}-1"))
    value = _number(canon(g))
    if _is_int(g):
        cases += [("{gold}.5", f"{g}.5"), ("{gold}0", f"{g}0"), ("{gold}+1", str(int(g) + 1))]
    decimals = re.fullmatch(r"-?\d+\.(\d+)", g)
    if decimals:  # a decimal gold is judged at the precision it states: step its last digit
        step = Fraction(1, 10 ** len(decimals.group(1)))
        cases.append(("{gold} + one unit in its last digit", _decimal(Fraction(g) + step)))
    elif value is not None:  # exact: a millionth off is wrong
        cases.append(("{gold}+10^-6", _decimal(value + Fraction(1, 10**6))))
    probes = [
        Probe("perturbed", name, style, text, "zero_correct")
        for name, raw in cases
        if not same_value(raw, g)  # "00" for 0 is still 0
        for style, text in render_all(raw, tags)
    ]
    for name, text in (
        ("\\boxed{gold} or \\boxed{alt}", f"It is $\\boxed{{{g}}}$ or $\\boxed{{{a}}}$."),
        ("first \\boxed{gold}, but actually \\boxed{alt}",
         f"First I got $\\boxed{{{g}}}$, but actually it is $\\boxed{{{a}}}$."),
    ):  # fmt: skip
        probes.append(Probe("perturbed", name, "boxed", text, "zero_correct"))
    if len(tags) >= 2:  # the gold only in the reasoning; the stated answer is another value
        first, last = tags[0], tags[-1]
        text = f"<{first}>The answer is {g}.</{first}>\n<{last}>{a}</{last}>"
        probes.append(Probe("perturbed", f"{{gold}} in <{first}>, {{alt}} in <{last}>",
                            "answer_tag", text, "zero_correct"))  # fmt: skip
    return probes


def _decimal(x: Fraction) -> str:
    """Exact decimal of a fraction whose denominator divides 10^k, else a/b."""
    for k in range(0, 13):
        if (x * 10**k).denominator == 1:
            n = x * 10**k
            sign, digits = ("-" if n < 0 else ""), str(abs(int(n))).rjust(k + 1, "0")
            return sign + (digits[:-k] + "." + digits[-k:] if k else digits)
    return f"{x.numerator}/{x.denominator}"


def format_probes(gold: str | None, tags: Sequence[str]) -> list[Probe]:
    """Broken tag sequences holding a wrong answer: the total reward must be 0.

    Built from the env's own tags, so each is malformed for *this* env's format reward.
    """
    (w,) = others(gold or "", 1)
    first, last = tags[0], tags[-1]
    good = _tagged(w, tags)
    cases = [
        ("tags with only whitespace", "\n".join(f"<{t}> </{t}>" for t in tags)),
        (f"<{first}> nested in itself", f"<{first}><{first}>x</{first}></{first}>\n{good}"),
        ("content before the tags", f"Sure! Here it is.\n{good}"),
        ("content after the tags", f"{good}\nSo the answer is {w}."),
        (f"<{last}> duplicated", f"{good}\n<{last}>{w}</{last}>"),
        (f"<{last}> never closed", good[: -len(f"</{last}>")]),
        ("upper-case tags", good.replace(f"<{first}>", f"<{first.upper()}>")),
    ]
    if len(tags) >= 2:
        cases += [
            (f"<{last}> nested in <{first}>", f"<{first}>x <{last}>{w}</{last}></{first}>"),
            (f"<{first}> duplicated", f"<{first}>a</{first}>\n{good}"),
            ("blocks in reverse order", "\n".join(reversed(good.split("\n")))),
            (f"<{first}> missing", f"<{last}>{w}</{last}>"),
        ]
    return [Probe("format", n, "-", c, "zero") for n, c in cases]


def gold_probes(gold: str, styles: Sequence[str], tags: Sequence[str]) -> list[Probe]:
    """The row's own gold in each style the env promises: each must score 1."""
    return [Probe("gold", "{gold}", s, STYLES[s](gold.strip(), tags), "full") for s in styles]
