"""String normalization of math answers, before any parsing: the notation that changes how an
answer is written but not its value (wrappers, ``\\text{}`` units, thousands separators, currency,
percent, degrees, scientific ``e`` notation, ``\\frac12``, mixed numbers ``1\\frac12``, repeating
decimals, ``x \\in``/``f(x) =`` prefixes), plus inequalities read as intervals and
multiple-choice letters.

Every rule is a bounded regex or a token scan, linear in the input, so this runs in the caller's
process; `verirl.rewards.math_equiv` builds on it.
"""

from __future__ import annotations

import re
from fractions import Fraction

_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_DROP = (
    "\\displaystyle", "\\left", "\\right", "\\!", "\\;", "\\:", "\\quad", "\\qquad",
    "\\bigl", "\\bigr", "\\Bigl", "\\Bigr", "\\big", "\\Big",
)  # fmt: skip
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_PERCENT = re.compile(r"\\?%")
_CURRENCY = re.compile(r"\\\$|\$|€|£|¥|\\euro|\\pounds")
_THIN_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|\\,|\\ |~|\s)(?=\d{3}(?!\d))")
_COMMA_THOUSANDS = re.compile(r"(?<![\d.,])(\d{1,3})((?:,\d{3})+)(?![\d,])")
_SCI = re.compile(r"(\d(?:\.\d+)?)\s*[eE]\s*([+-]?\d+)(?![\w])")
_SHORT_FRAC = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_SHORT_SQRT = re.compile(r"\\sqrt\s*([0-9a-zA-Z])")
_MIXED = re.compile(r"(?<![\d}.^_{])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}")
_MEMBER = re.compile(r"^[a-zA-Z]\s*\\in\s*")  # "x \in [2, 5]" states the interval
_FUNC_DEF = re.compile(r"^[a-zA-Z]\([a-z]\)\s*=\s*")  # "f(x) = 2x" answers with 2x
_REPEATING = re.compile(r"(\d*)\.(\d*)\\overline\{(\d{1,50})\}")
_INEQ = re.compile(r"^([a-zA-Z])\s*(<|>|\\leq|\\geq|\\lt|\\gt)\s*([^<>]+)$")
_BETWEEN = re.compile(r"^([^<>]+?)\s*(<|\\leq|\\lt)\s*([a-zA-Z])\s*(<|\\leq|\\lt)\s*([^<>]+)$")
_UNIT_WORD = re.compile(r"[A-Za-z]{2,}\.?(?:\^\{?\d\}?)?")
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?(?:[.:)]|\s|$)")
MATH_WORDS = {"sqrt", "pi", "log", "ln", "sin", "cos", "tan", "exp", "infty", "inf", "oo"}
_MAX_NORMALIZE = 4000


def normalize(ans: str) -> str:
    """Canonical string form of an answer: wrappers, units, separators and notation removed.

    >>> normalize(r"\\$1{,}000 \\text{ dollars}.")
    '1000'
    >>> normalize(r"1\\frac12")
    '(1+\\\\frac{1}{2})'
    >>> normalize("1.5e3")
    '1.5\\\\times10^{3}'
    """
    s = ans.strip()
    if len(s) > _MAX_NORMALIZE:  # left as is; the guarded symbolic stage will reject it
        return s
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    for _ in range(3):  # nested \text{\textbf{..}}
        s = _TEXT_CMD.sub(r"\1", s)
    for tok in _DROP:
        s = s.replace(tok, "")
    s = s.replace("\\le ", "\\leq ").replace("\\ge ", "\\geq ")
    s = _DEGREE.sub("", s)
    s = _PERCENT.sub("", s)
    s = _CURRENCY.sub("", s)
    s = _THIN_THOUSANDS.sub("", s)
    if not any(b in s for b in ("(", "[", "\\{")):  # "(3,100)" is a pair, not 3100
        s = _COMMA_THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s)
    s = _SCI.sub(r"\1\\times10^{\2}", s)
    s = _SHORT_FRAC.sub(r"\\frac{\1}{\2}", s)
    s = _SHORT_SQRT.sub(r"\\sqrt{\1}", s)
    s = _MIXED.sub(r"(\1+\\frac{\2}{\3})", s)
    s = s.strip().rstrip(".").strip()
    s = _MEMBER.sub("", s)
    s = _FUNC_DEF.sub("", s)
    s = _REPEATING.sub(_repeating_to_fraction, s)
    return _strip_units(s).replace("\\ ", " ").strip()


def _repeating_to_fraction(m: re.Match[str]) -> str:
    """0.1\\overline{6} -> \\frac{1}{6}: x = I.N(R repeating) = I.N + R / (10^|N| (10^|R| - 1))."""
    whole, fixed, rep = m.group(1) or "0", m.group(2), m.group(3)
    value = Fraction(int(whole)) + Fraction(int(fixed or "0"), 10 ** len(fixed))
    value += Fraction(int(rep), 10 ** len(fixed) * (10 ** len(rep) - 1))
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def as_interval(s: str) -> str:
    """An inequality in one variable as the interval it describes, else `s` unchanged.

    >>> print(as_interval("x > 3"), as_interval(r"-1 \\leq x < 2"), as_interval("x^2 > 1"))
    (3, \\infty) [-1, 2) x^2 > 1
    """
    m = _BETWEEN.match(s)
    if m:
        lo, op1, _, op2, hi = m.groups()
        left = "(" if op1 in ("<", "\\lt") else "["
        right = ")" if op2 in ("<", "\\lt") else "]"
        return f"{left}{lo.strip()}, {hi.strip()}{right}"
    m = _INEQ.match(s)
    if m:
        _, op, bound = m.groups()
        strict = op in ("<", ">", "\\lt", "\\gt")
        if op in (">", "\\gt", "\\geq"):
            return f"{'(' if strict else '['}{bound.strip()}, \\infty)"
        return f"(-\\infty, {bound.strip()}{')' if strict else ']'}"
    return s


def _strip_units(s: str) -> str:
    """Drop trailing unit words after a number ("5 cm", "12 apples", "3 m^2"); a token scan, not
    a nested regex, so 20,000 letters cannot make it backtrack."""
    words = s.split()
    while len(words) >= 2 and _UNIT_WORD.fullmatch(words[-1]):
        if words[-1].lower().rstrip(".") in MATH_WORDS or "\\" in words[-1]:
            break
        words.pop()
    if len(words) < len(s.split()) and words and words[-1][-1:] in "0123456789}.)":
        return " ".join(words)
    return s


def choice_letter(ans: str) -> str | None:
    """The multiple-choice letter an answer names, if it is one.

    >>> choice_letter(r"\\text{(B)}"), choice_letter("(c) 42"), choice_letter("x+1")
    ('B', 'C', None)
    """
    s = _TEXT_CMD.sub(r"\1", ans.strip()).strip().strip("$").strip()
    m = _CHOICE.match(s)
    if m is None:
        return None
    rest = s[m.end() :].strip()
    # "(c) 42" names C; a bare "e" or "a" in an expression does not.
    if rest and not s.startswith("("):
        return None
    return m.group(1).upper()
