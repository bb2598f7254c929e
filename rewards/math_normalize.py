"""String normalization of math answers, before any parsing: the notation that changes how an
answer is written but not its value (wrappers, ``\\text{}``/``\\textnormal{}``/``\\mathrm{}``
units, thousands separators ``1{,}000``/``1\\,000``/``11,\\!111``, currency, percent, degrees,
scientific ``e`` notation, TeX shorthands ``\\frac12``/``\\frac3{3}``/``\\sqrt3``, mixed numbers
``1\\frac12`` and plain ``2 1/2``, repeating decimals, empty-set spellings, ASCII ``>=``/``<=``,
``x \\in``/``f(x) =`` prefixes), plus inequalities read as intervals and multiple-choice letters.

What it never does: join two numbers that only whitespace separates. ``2 3`` stays ``2 3`` (TeX
shows "2 3"), and `juxtaposed` reports it, so that the checker rejects it instead of reading a
product or a concatenation. TeX spacing commands (``\\;``, ``\\quad``) become spaces for that
reason; only ``\\!`` (a negative space) joins.

Every rule is a bounded regex or a token scan, linear in the input, so this runs in the caller's
process; `verirl.rewards.math_equiv` builds on it.
"""

from __future__ import annotations

import re
from fractions import Fraction

_TEXT_CMD = re.compile(
    r"\\(?:text|textbf|textit|textnormal|textrm|textsf|texttt|emph|mathrm|mathbf|mathit|mathsf"
    r"|mathtt|mbox|hbox|operatorname)\s*\{([^{}]*)\}"
)
_DROP = (
    "\\displaystyle", "\\left", "\\right", "\\!",
    "\\bigl", "\\bigr", "\\Bigl", "\\Bigr", "\\big", "\\Big",
)  # fmt: skip
# Spacing commands separate tokens: a space, so that "2\\;3" is two numbers, not 23.
_SPACE_CMD = re.compile(r"(?<!\\)\\(?:quad|qquad|[;:, ]|hspace\{[^{}]{0,20}\})|~|\u2009|\u202f")
_TEX_THOUSANDS = re.compile(r"(?<=\d),\s*\\!\s*(?=\d{3}(?!\d))")  # 11,\!111 (MATH's style)
_EMPTY_SET = re.compile(r"\\varnothing|\\emptyset|∅|\\\{\s*\\\}|\bempty set\b", re.I)
_ASCII_REL = (("≥", "\\geq "), ("≤", "\\leq "), (">=", "\\geq "), ("<=", "\\leq "),
              ("=>", "\\geq "), ("=<", "\\leq "))  # fmt: skip
_TEX_REL = re.compile(r"\\(geqslant|leqslant|geq|leq|ge|le|gt|lt)(?![a-zA-Z])")
_TEX_REL_NAME = {"geqslant": "\\geq ", "leqslant": "\\leq ", "geq": "\\geq ", "leq": "\\leq ",
                 "ge": "\\geq ", "le": "\\leq ", "gt": ">", "lt": "<"}  # fmt: skip
_MATRIX_ENV = re.compile(r"\\(begin|end)\{(?:bmatrix|Bmatrix|matrix|smallmatrix)\}")
_PLAIN_MIXED = re.compile(r"(?<![\d./^_{])(\d{1,9})\s+(\d{1,9})\s*/\s*(\d{1,9})(?![\d/.])")
_LEADING_ZEROS = re.compile(r"(?<![\d.,_^{])0+(?=\d)")
_JUXTAPOSED = re.compile(r"(?<![\d.,_^])\d+(?:[.,]\d+)?\s+\.?\d")  # not \\log_2 8
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_PERCENT = re.compile(r"\\?%")
_CURRENCY = re.compile(r"\\\$|\$|€|£|¥|\\euro|\\pounds")
# Explicit TeX thousands separators only: a plain space between digit groups is juxtaposition.
_THIN_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|\\,|(?<!\\)\\ |~|\u2009|\u202f)(?=\d{3}(?!\d))")
_COMMA_THOUSANDS = re.compile(r"(?<![\d.,])(\d{1,3})((?:,\d{3})+)(?![\d,])")
_SCI = re.compile(r"(\d(?:\.\d+)?)\s*[eE]\s*([+-]?\d+)(?![\w])")
_MIXED = re.compile(r"(?<![\d}.^_{])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}")
_MEMBER = re.compile(r"^[a-zA-Z]\s*\\in\s*")  # "x \in [2, 5]" states the interval
_FUNC_DEF = re.compile(r"^[a-zA-Z]\([a-z]\)\s*=\s*")  # "f(x) = 2x" answers with 2x
_REPEATING = re.compile(r"(\d*)\.(\d*)\\overline\{(\d{1,50})\}")
_INEQ = re.compile(r"^([a-zA-Z])\s*(<|>|\\leq|\\geq)\s*([^<>=\\]*(?:\\(?!leq|geq)[^<>=\\]*)*)$")
_INEQ_LEFT = re.compile(r"^([^<>=]+?)\s*(<|>|\\leq|\\geq)\s*([a-zA-Z])$")
_BETWEEN = re.compile(r"^([^<>]+?)\s*(<|\\leq)\s*([a-zA-Z])\s*(<|\\leq)\s*([^<>]+)$")
_FLIP = {"<": ">", ">": "<", "\\leq": "\\geq", "\\geq": "\\leq"}
_UNIT_WORD = re.compile(r"[A-Za-z]{2,}\.?(?:\^\{?\d\}?)?")
_CHOICE_AGAIN = re.compile(r"\(\s*[A-Ea-e]\s*\)|^[A-Ea-e](?:[\s,;/.:)]|$)")
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
    s = _TEX_THOUSANDS.sub("", s)
    for tok in _DROP:
        s = s.replace(tok, "")
    for a, b in _ASCII_REL:
        s = s.replace(a, b)
    s = _TEX_REL.sub(lambda m: _TEX_REL_NAME[m.group(1)], s)
    s = _EMPTY_SET.sub(r"\\emptyset", s)
    s = _MATRIX_ENV.sub(r"\\\1{pmatrix}", s)
    s = _DEGREE.sub("", s)
    s = _PERCENT.sub("", s)
    s = _CURRENCY.sub("", s)
    s = _THIN_THOUSANDS.sub("", s)
    s = _SPACE_CMD.sub(" ", s)
    s = _LEADING_ZEROS.sub("", s)  # "+0001,000.00" is 1000
    if not any(b in s for b in ("(", "[", "\\{")):  # "(3,100)" is a pair, not 3100
        s = _COMMA_THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s)
    s = _SCI.sub(r"\1\\times10^{\2}", s)
    s = brace_shorthands(s)
    s = _MIXED.sub(r"(\1+\\frac{\2}{\3})", s)
    s = _PLAIN_MIXED.sub(_plain_mixed, s)
    s = s.strip().rstrip(".").strip()
    if s.endswith("\\") and not s.endswith("\\\\"):
        s = s[:-1].strip()  # "185\\" (a stray TeX line end) is 185
    s = _MEMBER.sub("", s)
    s = _FUNC_DEF.sub("", s)
    s = _REPEATING.sub(_repeating_to_fraction, s)
    return " ".join(_strip_units(s).split())


def juxtaposed(s: str) -> bool:
    """True when two numbers stand side by side with only space between them (``2 3``): neither
    a product nor a concatenation can be read into that, so the answer is rejected.

    >>> juxtaposed(normalize("2 3")), juxtaposed(normalize(r"2\\;3")), juxtaposed(normalize("1{,}000"))
    (True, True, False)
    """
    return _JUXTAPOSED.search(s) is not None


def _plain_mixed(m: re.Match[str]) -> str:
    """ "2 1/2" is the mixed number 2½ only when 1/2 is a proper fraction; else left alone (and
    then rejected as juxtaposed)."""
    whole, num, den = m.groups()
    if 0 < int(num) < int(den):
        return f"({whole}+\\frac{{{num}}}{{{den}}})"
    return m.group(0)


def brace_shorthands(s: str) -> str:
    """TeX lets a one-token argument go without braces: ``\\frac3{3}``, ``\\frac{\\sqrt3}2``,
    ``\\sqrt3``. Rewrite every ``\\frac``/``\\sqrt`` argument in braces, by a single scan.

    >>> print(brace_shorthands(r"-\\frac{\\sqrt3}2"), brace_shorthands(r"\\frac12 + \\sqrt[3]8"))
    -\\frac{\\sqrt{3}}{2} \\frac{1}{2} + \\sqrt[3]{8}
    """
    if "\\frac" not in s and "\\sqrt" not in s:
        return s
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        if s.startswith("\\frac", i) and not s[i + 5 : i + 6].isalpha():
            i += 5
            args = []
            for _ in range(2):
                arg, i = _tex_arg(s, i)
                args.append(brace_shorthands(arg))
            out.append("\\frac{" + args[0] + "}{" + args[1] + "}")
        elif s.startswith("\\sqrt", i) and not s[i + 5 : i + 6].isalpha():
            i += 5
            while i < n and s[i] == " ":
                i += 1
            index = ""
            if i < n and s[i] == "[":
                j = s.find("]", i)
                if j < 0:
                    out.append(s[i:])
                    break
                index, i = s[i : j + 1], j + 1
            arg, i = _tex_arg(s, i)
            out.append("\\sqrt" + index + "{" + brace_shorthands(arg) + "}")
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _tex_arg(s: str, i: int) -> tuple[str, int]:
    """One TeX macro argument at s[i:] (spaces skipped): a balanced {group}, a \\command, or one
    character; returns (its text without the braces, the offset after it)."""
    n = len(s)
    while i < n and s[i] == " ":
        i += 1
    if i >= n:
        return "", i
    if s[i] == "{":
        depth, j = 0, i
        while j < n:
            if s[j] == "\\":
                j += 2
                continue
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            if depth == 0:
                return s[i + 1 : j], j + 1
            j += 1
        return s[i + 1 :], n  # unclosed: the parser rejects it later
    if s[i] == "\\":
        j = i + 1
        while j < n and s[j].isalpha():
            j += 1
        return s[i : max(j, i + 2)], max(j, i + 2)
    return s[i], i + 1


def _repeating_to_fraction(m: re.Match[str]) -> str:
    """0.1\\overline{6} -> \\frac{1}{6}: x = I.N(R repeating) = I.N + R / (10^|N| (10^|R| - 1))."""
    whole, fixed, rep = m.group(1) or "0", m.group(2), m.group(3)
    value = Fraction(int(whole)) + Fraction(int(fixed or "0"), 10 ** len(fixed))
    value += Fraction(int(rep), 10 ** len(fixed) * (10 ** len(rep) - 1))
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def as_interval(s: str) -> str:
    """An inequality in one variable as the interval it describes, else `s` unchanged.

    >>> print(as_interval("x > 3"), as_interval(r"-1 \\leq x < 2"), as_interval(r"5 \\geq y"))
    (3, \\infty) [-1, 2) (-\\infty, 5]
    """
    m = _BETWEEN.match(s)
    if m:
        lo, op1, _, op2, hi = m.groups()
        left = "(" if op1 == "<" else "["
        right = ")" if op2 == "<" else "]"
        return f"{left}{lo.strip()}, {hi.strip()}{right}"
    m = _INEQ.match(s)
    if m:
        _, op, bound = m.groups()
    else:
        left_bound = _INEQ_LEFT.match(s)  # "5 \geq x" says "x \leq 5"
        if left_bound is None:
            return s
        bound, op, _ = left_bound.groups()
        op = _FLIP[op]
    if not bound.strip():
        return s
    strict = op in ("<", ">")
    if op in (">", "\\geq"):
        return f"{'(' if strict else '['}{bound.strip()}, \\infty)"
    return f"(-\\infty, {bound.strip()}{')' if strict else ']'}"


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


def choice(ans: str) -> tuple[str, str] | None:
    """(letter, the text after it) of a multiple-choice answer, if the answer is one.

    >>> choice(r"\\text{(B)}"), choice("(c) 42"), choice("(B)-1"), choice("(A)(B)")
    (('B', ''), ('C', '42'), ('B', '-1'), None)
    """
    s = _TEXT_CMD.sub(r"\1", ans.strip()).strip().strip("$").strip()
    m = _CHOICE.match(s)
    if m is None:
        return None
    rest = s[m.end() :].strip()
    # "(c) 42" and "C. x = 42" name C; a bare "e" or "a" in an expression does not.
    if rest and not s.startswith("(") and not (m.group(1).isupper() and s[1:2] in ".)"):
        return None
    if m.group(1).islower() and not s.startswith("("):
        return None  # a bare "c" is as likely the constant c as choice (C): prefer 0
    if _CHOICE_AGAIN.search(rest):  # "(A)(B)(C)" is a hedge over choices, not a choice
        return None
    return m.group(1).upper(), rest
