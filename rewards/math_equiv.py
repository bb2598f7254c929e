"""Is a predicted math answer equivalent to the gold answer?

Two stages. `fast_equiv` decides plain numbers (integers, decimals, fractions, mixed numbers,
thousands separators, units, percent, currency), multiple-choice letters and words with exact
rational arithmetic and no sympy; it answers ``None`` when it cannot decide. `symbolic_equiv`
parses LaTeX with latex2sympy2_extended (plain text with sympy's parser) and compares structures:
equations and assignments, ordered tuples, unordered sets, intervals, unions, matrices, then
expressions by ``simplify(a - b) == 0`` with a high-precision numeric check.

Exactness (the Math-Verify failure modes, huggingface/Math-Verify#14): an exact gold is matched
exactly, so ``1000001 ≠ 1000000``, ``10^{-9} ≠ 0`` and ``1/2^{99} ≠ 1/2^{98}``; no relative
tolerance is ever applied to exact values. A decimal gold with d places is matched at the
precision it states: the prediction must round to it, |pred − gold| ≤ ½·10^(−d).

`symbolic_equiv` can take unbounded time and memory (``9^{9^{9^9}}``); call it through
`verirl.rewards.math_reward`, which runs it in worker processes under a hard deadline.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from verirl.rewards.math_normalize import (
    MATH_WORDS,
    as_interval,
    choice,
    juxtaposed,
    normalize,
)
from verirl.rewards.math_values import ASTRONOMICAL, Kind, admissible, digits, value_kind

_MIXED_NORMAL = re.compile(r"\(?(-?\d+)\+\\frac\{(\d+)\}\{(\d+)\}\)?")
_NUM = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_FRAC_NUM = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")
_SLASH_NUM = re.compile(r"(-?\d+)\s*/\s*(-?\d+)")
_WORD = re.compile(r"[A-Za-z][A-Za-z '\-]*")
_MAX_DIGITS = 1000  # beyond this a "number" goes to the guarded symbolic stage


# ---------------------------------------------------------------------------------------------
# Fast path: exact rational numbers and words, no sympy
# ---------------------------------------------------------------------------------------------
def plain_number(s: str) -> tuple[Fraction, int | None] | None:
    """(value, decimal places stated or None when exact) of a plain number string.

    >>> plain_number("-0.250")
    (Fraction(-1, 4), 3)
    >>> plain_number(r"\\frac{3}{6}")
    (Fraction(1, 2), None)
    >>> plain_number("x") is None
    True
    """
    s = s.strip()
    if s.startswith("(") and s.endswith(")") and "," not in s:
        s = s[1:-1].strip()
    if not s or len(s) > _MAX_DIGITS:
        return None
    if s.startswith("+"):
        s = s[1:]
    if _NUM.fullmatch(s):
        places = len(s.split(".", 1)[1]) if "." in s else None
        return Fraction(s), places
    m = _FRAC_NUM.fullmatch(s) or _SLASH_NUM.fullmatch(s)
    if m:
        groups = m.groups()
        sign = -1 if len(groups) == 3 and groups[0] == "-" else 1
        num, den = int(groups[-2]), int(groups[-1])
        if den == 0:
            return None
        return sign * Fraction(num, den), None
    mixed = _MIXED_NORMAL.fullmatch(s)
    if mixed and int(mixed.group(3)) != 0:
        whole, num, den = (int(g) for g in mixed.groups())
        frac = Fraction(num, den)
        return (whole - frac if whole < 0 else whole + frac), None
    return None


def numbers_match(pred: Fraction, gold: Fraction, gold_places: int | None) -> bool:
    """Exact for an exact gold; within half a unit of the last stated place for a decimal gold.

    >>> numbers_match(Fraction(1000001), Fraction(1000000), None)
    False
    >>> numbers_match(Fraction(1, 3), Fraction("0.33"), 2)
    True
    """
    if gold_places is None or pred == gold:
        return pred == gold
    return abs(pred - gold) <= Fraction(1, 2 * 10**gold_places)


def _word(s: str) -> str | None:
    s = s.strip().strip(".").strip()
    if _WORD.fullmatch(s) and s.lower() not in MATH_WORDS and len(s) > 1:
        return " ".join(s.lower().replace("-", " ").split())
    return None


def same_choice(pred: tuple[str, str], gold: tuple[str, str]) -> bool:
    """Does the predicted (letter, text) name exactly the gold's choice?

    The letter must agree, and any text after it must be the gold's own text for that choice:
    text the gold does not state cannot be verified, and a letter followed by another value
    (``(B) 3``, ``(B)-1``, ``(B) \\pm 1``) states two answers at once, so it scores 0.

    >>> same_choice(("B", ""), ("B", "42")), same_choice(("B", "42"), ("B", "42"))
    (True, True)
    >>> same_choice(("B", "3"), ("B", "")), same_choice(("B", "43"), ("B", "42"))
    (False, False)
    """
    (p_letter, p_text), (g_letter, g_text) = pred, gold
    if p_letter != g_letter:
        return False
    if not p_text:
        return True
    return bool(g_text) and fast_equiv(p_text, g_text) is True


def fast_equiv(pred: str, gold: str) -> bool | None:
    """Decide without sympy when both answers are plain; ``None`` means "ask sympy".

    >>> fast_equiv("1,000", r"1{,}000"), fast_equiv("0.5", r"\\frac{1}{2}"), fast_equiv("B", r"\\text{(B)}")
    (True, True, True)
    >>> fast_equiv("1000001", "1000000"), fast_equiv("Monday", r"\\text{monday}")
    (False, True)
    >>> fast_equiv(r"\\sqrt{2}", "1.414") is None
    True
    """
    gold_choice = choice(gold)
    if gold_choice is not None:  # "(B)", "B", "B. 42": the gold is a choice
        pred_choice = choice(pred)
        if pred_choice is not None:
            return same_choice(pred_choice, gold_choice)
    p, g = normalize(pred), normalize(gold)
    if p and p == g:
        return True
    if juxtaposed(p) or juxtaposed(g):
        return False  # "2 3" is neither 6 nor 23: only the identical text matches it
    if p and "".join(p.split()) == "".join(g.split()):  # spacing never changes a LaTeX value
        return True
    gn, pn = plain_number(g), plain_number(p)
    if gn is not None and pn is not None:
        return numbers_match(pn[0], gn[0], gn[1])
    gw, pw = _word(g), _word(p)
    if gw is not None and pw is not None and len(gw) > 2 and len(pw) > 2:
        return gw == pw
    if pw is not None and len(pw) > 2 and gn is not None:
        return False  # "undefined" or "no solution" is not a number
    return None


# ---------------------------------------------------------------------------------------------
# Symbolic stage (run it under a deadline: see math_reward)
# ---------------------------------------------------------------------------------------------
_OPEN = {"(": ")", "[": "]", "\\{": "\\}"}


def split_top(s: str, sep: str = ",") -> list[str]:
    """Split at separators outside any brackets.

    >>> split_top("(1,2), f(3, 4), \\\\{5\\\\}")
    ['(1,2)', 'f(3, 4)', '\\\\{5\\\\}']
    """
    parts: list[str] = []
    cur: list[str] = []
    depth, i = 0, 0
    while i < len(s):
        if s.startswith(sep, i) and depth == 0:
            parts.append("".join(cur).strip())
            cur, i = [], i + len(sep)
            continue
        c = s[i]
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth += 1 if s[i + 1] == "{" else -1
            cur.append(s[i : i + 2])
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        cur.append(c)
        i += 1
    parts.append("".join(cur).strip())
    return parts


def _brackets(s: str) -> tuple[str, str, str] | None:
    """(open, inner, close) when the whole string is one bracketed group."""
    for op in ("\\{", "(", "["):
        if s.startswith(op):
            for cl in ("\\}", ")", "]"):
                if s.endswith(cl) and len(s) >= len(op) + len(cl):
                    inner = s[len(op) : len(s) - len(cl)]
                    if _balanced(inner):
                        return op, inner, cl
    return None


def _balanced(s: str) -> bool:
    depth = 0
    for c in s.replace("\\{", "(").replace("\\}", ")"):
        depth += c in "([{"
        depth -= c in ")]}"
        if depth < 0:
            return False
    return depth == 0


_PARSED: dict[str, Any] = {}  # per process: a GRPO group (or the guard) repeats its strings
_MAX_PARSED = 20_000


def _parse(s: str) -> Any:
    """`_parse_uncached`, memoised (the failure too): sympy values are immutable (matrices are
    made so), and each worker parses a repeated gold or candidate once."""
    hit = _PARSED.get(s)
    if hit is None:
        try:
            hit = (True, _parse_uncached(s))
        except Exception as e:
            hit = (False, e)
        if len(_PARSED) >= _MAX_PARSED:
            _PARSED.clear()
        _PARSED[s] = hit
    ok, value = hit
    if not ok:
        raise value
    return value


def _parse_uncached(s: str) -> Any:
    import sympy
    from latex2sympy2_extended import latex2sympy

    if juxtaposed(s):
        raise ValueError(f"juxtaposed numbers in {s!r}")
    if "\\" not in s and "{" not in s:
        from sympy.parsing.sympy_parser import (
            convert_xor,
            implicit_multiplication_application,
            parse_expr,
            standard_transformations,
        )

        try:
            t = (*standard_transformations, implicit_multiplication_application, convert_xor)
            names = {"e": sympy.E, "i": sympy.I, "pi": sympy.pi, "π": sympy.pi}
            expr = parse_expr(s, local_dict=names, transformations=t, evaluate=False)
            return _tidy(expr, sympy)
        except Exception:
            pass
    value = _tidy(latex2sympy(s), sympy)
    if isinstance(value, sympy.MatrixBase):
        value = sympy.ImmutableMatrix(value)
    return value


def _tidy(expr: Any, sympy: Any) -> Any:
    """Exact rationals for decimals, the imaginary unit for a free ``i``."""
    if isinstance(expr, (set, frozenset, list, tuple)):
        return type(expr)(_tidy(e, sympy) for e in expr)
    if not hasattr(expr, "subs"):
        return expr
    if expr.has(sympy.Symbol("i")):
        expr = expr.subs(sympy.Symbol("i"), sympy.I)
    if expr.has(sympy.Float):
        expr = expr.xreplace({f: sympy.Rational(str(f)) for f in expr.atoms(sympy.Float)})
    return expr


def _values_equal(a: Any, b: Any, gold_places: int | None) -> bool:
    """Expression equality; `b` is the gold. Callers have checked `admissible(a, b)`."""
    import sympy

    if isinstance(a, sympy.Eq) and isinstance(b, sympy.Eq):
        if a.lhs == b.lhs and a.lhs.is_Symbol:
            return _values_equal(a.rhs, b.rhs, gold_places)
        return _same_relation(a.lhs - a.rhs, b.lhs - b.rhs, sympy, any_sign=True)
    if isinstance(a, sympy.Eq) and a.lhs.is_Symbol:  # "x = 3" against "3"
        return _values_equal(a.rhs, b, gold_places)
    if isinstance(b, sympy.Eq) and b.lhs.is_Symbol:
        return _values_equal(a, b.rhs, gold_places)
    if isinstance(a, sympy.Rel) or isinstance(b, sympy.Rel):
        return _inequalities_equal(a, b, sympy)
    if isinstance(a, sympy.MatrixBase) or isinstance(b, sympy.MatrixBase):
        if not (isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase)):
            return False
        if a.shape != b.shape:
            return False
        return all(_values_equal(x, y, gold_places) for x, y in zip(a, b, strict=True))
    if isinstance(a, sympy.Set) or isinstance(b, sympy.Set):
        return isinstance(a, sympy.Set) and isinstance(b, sympy.Set) and bool(a == b)
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return False
    if not a.free_symbols <= b.free_symbols:
        # "x" or "n + 1" is no value of a gold without x or n; only an exact identity
        # (sin²x + cos²x for 1) is, and no numeric test may stand in for that proof.
        return not _differ_at_points(a - b, sympy) and bool(sympy.simplify(a - b) == 0)
    if a == b:
        return True
    if a.has(sympy.oo, -sympy.oo) or b.has(sympy.oo, -sympy.oo):
        # Both infinite (`admissible`): a numeric test means nothing, only structure decides.
        return bool(sympy.simplify(a) == sympy.simplify(b))
    big_a, big_b = digits(a, sympy) > ASTRONOMICAL, digits(b, sympy) > ASTRONOMICAL
    if big_a or big_b:
        # 9^{9^{9^9}} or 100000!: never evaluate (not even at a point, not even to a few
        # digits); equal only if written the same way.
        return bool(big_a and big_b and a == b)
    if gold_places is not None and a.is_number and b.is_number:
        diff = sympy.N(a - b, 30)
        return bool(abs(diff) <= sympy.Rational(1, 2 * 10**gold_places))
    diff = a - b
    if a.is_number and b.is_number:
        exact_diff = diff.doit()  # latex2sympy leaves powers unevaluated: 2^{2^{2^2}}
        if exact_diff.is_Rational:
            return bool(exact_diff == 0)
        if _clearly_apart(a, b, sympy):
            return False
        # No simplify() for constants (it can take seconds on nested radicals): when the
        # irrational parts cancel, doit() above already gave the exact rational difference
        # (so π + 10^{-50} ≠ π exactly); otherwise agree to 45 of 60 digits, relative to the
        # operands' size (e^{π√163} is 7.5e-13 away from an integer and is told apart).
        va, vb = sympy.N(a, 60), sympy.N(b, 60)
        scale = max(abs(va), abs(vb))
        return bool(scale != 0 and abs(va - vb) <= scale * sympy.Float(10) ** (-45))
    if _differ_at_points(diff, sympy):
        return False
    return bool(sympy.expand(diff) == 0 or sympy.simplify(diff) == 0)


def _same_relation(da: Any, db: Any, sympy: Any, any_sign: bool) -> bool:
    """da ⋈ 0 and db ⋈ 0 say the same thing iff da = c·db for a constant c ≠ 0 (c > 0 for an
    inequality, whose direction a negative factor flips)."""
    if not da.free_symbols <= db.free_symbols or db == 0:
        return False
    if _ratio_varies(da, db, sympy):
        return False  # cheap: most different equations are told apart at two points
    ratio = sympy.cancel(da / db)
    if not ratio.is_number:
        ratio = sympy.simplify(ratio)
    if not ratio.is_number or ratio == 0 or not ratio.is_finite:
        return False
    return bool(any_sign or ratio.is_positive)


def _ratio_varies(da: Any, db: Any, sympy: Any) -> bool:
    """da/db takes two clearly different values at two fixed points (so it is no constant)."""
    syms = sorted(db.free_symbols, key=str)
    values = []
    for k in range(2):
        point = {x: sympy.Rational(37 + 11 * i + 5 * k, 29) for i, x in enumerate(syms)}
        try:
            values.append(complex(sympy.N((da / db).subs(point), 20)))
        except (TypeError, ValueError, ZeroDivisionError):
            return False
    a, b = values
    return a == a and b == b and abs(a - b) > 1e-9 * max(1.0, abs(a), abs(b))


def _inequalities_equal(a: Any, b: Any, sympy: Any) -> bool:
    """``x \\geq 5``, ``5 \\leq x``, ``-x \\leq -5`` and ``2x \\geq 10`` are one statement: each
    side is put as ``e > 0`` or ``e \\geq 0`` and the two ``e`` compared up to a positive factor.
    An inequality and a non-inequality are never equal."""
    if not (isinstance(a, sympy.Rel) and isinstance(b, sympy.Rel)):
        return False
    if isinstance(a, (sympy.Eq, sympy.Ne)) or isinstance(b, (sympy.Eq, sympy.Ne)):
        return False
    ea, strict_a = _as_positive(a, sympy)
    eb, strict_b = _as_positive(b, sympy)
    return strict_a == strict_b and _same_relation(ea, eb, sympy, any_sign=False)


def _as_positive(r: Any, sympy: Any) -> tuple[Any, bool]:
    """(e, strict) with r ⟺ e > 0 (strict) or e ≥ 0."""
    if isinstance(r, (sympy.StrictGreaterThan, sympy.GreaterThan)):
        return r.lhs - r.rhs, isinstance(r, sympy.StrictGreaterThan)
    return r.rhs - r.lhs, isinstance(r, sympy.StrictLessThan)


def _clearly_apart(a: Any, b: Any, sympy: Any) -> bool:
    """A cheap numeric rejection before `simplify`: values that differ in the first 20 of 30
    evaluated digits are different numbers (sympy's evalf tracks its error)."""
    try:
        va, vb = complex(sympy.N(a, 30)), complex(sympy.N(b, 30))
    except (TypeError, ValueError):
        return False
    scale = max(abs(va), abs(vb))
    return scale > 0 and abs(va - vb) > 1e-12 * scale


def _differ_at_points(diff: Any, sympy: Any) -> bool:
    """True when a - b is clearly nonzero at a fixed positive point (no randomness: verdicts
    are reproducible). Equal expressions vanish everywhere they are defined."""
    syms = sorted(diff.free_symbols, key=str)
    for k in range(2):
        point = {x: sympy.Rational(37 + 11 * i + 5 * k, 29) for i, x in enumerate(syms)}
        try:
            v = complex(sympy.N(diff.subs(point), 20))
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if v == v and abs(v) > 1e-9:  # v == v filters NaN
            return True
    return False


def _elements(s: str) -> tuple[str, list[str]] | None:
    """A compound answer as (kind, parts); kind is tuple/set/interval/union/bare."""
    if "\\cup" in s:
        return "union", split_top(s, "\\cup")
    br = _brackets(s)
    if br is not None:
        op, inner, cl = br
        parts = split_top(inner)
        if op == "\\{":
            return "set", parts
        if len(parts) >= 2:
            return f"seq{op}{cl}", parts
        return None
    parts = split_top(s)
    return ("bare", parts) if len(parts) >= 2 else None


def _pm(s: str) -> str:
    if s.count("\\pm") == 1:
        head, _, tail = s.partition("\\pm")
        return f"{head}+{tail}, {head}-{tail}" if head.strip() else f"{tail}, -{tail}"
    return s


def symbolic_equiv(pred: str, gold: str) -> tuple[bool, str]:
    """Full check; may be slow on adversarial input, so run it under a deadline.

    >>> symbolic_equiv(r"\\frac{1}{2^{99}}", r"\\frac{1}{2^{98}}")[0]
    False
    >>> symbolic_equiv(r"(-\\infty, 3]", r"(-\\infty,3]")[0], symbolic_equiv("x=3", "3")[0]
    (True, True)
    >>> symbolic_equiv(r"\\{3, 1\\}", r"1, 3")[0], symbolic_equiv("(3, 1)", "(1, 3)")[0]
    (True, False)
    """
    fast = fast_equiv(pred, gold)
    if fast is not None:
        return fast, "fast"
    p, g = _pm(as_interval(normalize(pred))), _pm(as_interval(normalize(gold)))
    gn = plain_number(g)
    places = gn[1] if gn is not None else None
    return _compound_equal(p, g, places), "symbolic"


def _compound_equal(p: str, g: str, places: int | None) -> bool:
    if _has_relation(p) != _has_relation(g):
        return _relation_vs_interval(p, g)
    ge, pe = _elements(g), _elements(p)
    if ge is None and pe is None:
        return _single_equal(p, g, places)
    if ge is None or pe is None:
        # "(1, 2)" (point or open interval) vs "1, 2" or "x=1, y=2": compare as sequences.
        if ge is None:
            return False
        pe = pe if pe is not None else ("bare", [p])
    gkind, gparts = ge
    pkind, pparts = pe
    if len(gparts) != len(pparts):
        return False
    unordered = {"set", "bare", "union"}
    if gkind in unordered and (pkind in unordered or pkind == "seq()"):
        return _match_unordered(pparts, gparts)
    if gkind.startswith("seq") and (pkind == gkind or pkind == "bare"):
        return all(_compound_equal(x, y, None) for x, y in zip(pparts, gparts, strict=True))
    return False


_RELATION = re.compile(r"<|>|\\leq|\\geq")


def _has_relation(s: str) -> bool:
    return _RELATION.search(s) is not None


def _relation_vs_interval(p: str, g: str) -> bool:
    """An inequality in one variable against an interval or union: compare the sets
    (``-x \\leq -5`` against ``[5, \\infty)``)."""
    import sympy

    rel_text, other = (p, g) if _has_relation(p) else (g, p)
    try:
        rel = _parse(rel_text)
        target = _interval_value(other)
    except Exception:
        return False
    if target is None or not isinstance(rel, (sympy.Rel, sympy.And, sympy.Or)):
        return False
    if isinstance(rel, (sympy.Eq, sympy.Ne)) or len(rel.free_symbols) != 1:
        return False
    if value_kind(rel) == "bad":
        return False
    return bool(rel.as_set() == target)


def _interval_value(s: str) -> Any:
    """``[a, b)`` or a ``\\cup`` of such as a sympy set; None when `s` is not one."""
    import sympy

    if "\\cup" in s:
        parts = [_interval_value(x) for x in split_top(s, "\\cup")]
        return None if any(x is None for x in parts) else sympy.Union(*parts)
    br = _brackets(s)
    if br is None or br[0] not in "([" or br[2] not in ")]":
        return None
    ends = split_top(br[1])
    if len(ends) != 2:
        return None
    lo, hi = (_parse(e) for e in ends)
    if "bad" in (value_kind(lo), value_kind(hi)):
        return None
    return sympy.Interval(lo, hi, br[0] == "(", br[2] == ")")


def _match_unordered(pparts: list[str], gparts: list[str]) -> bool:
    left = list(pparts)
    for g in gparts:
        hit = next((i for i, x in enumerate(left) if _compound_equal(x, g, None)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def _single_equal(p: str, g: str, places: int | None) -> bool:
    fast = fast_equiv(p, g)
    if fast is not None:
        return fast
    try:
        gv = _parse(g)
    except Exception:
        return p.strip().lower() == g.strip().lower()
    try:
        pv = _parse(p)
    except Exception:
        return False
    if not admissible(pv, gv, _kind(p, pv), _kind(g, gv)):
        return False  # 1/0, \\log 0, x = x, True: no value; ∞ only meets ∞
    return _values_equal(pv, gv, places)


_KINDS: dict[str, Kind] = {}


def _kind(text: str, value: Any) -> Kind:
    """`value_kind` of a parsed string, memoised with the parse."""
    hit = _KINDS.get(text)
    if hit is None:
        if len(_KINDS) >= _MAX_PARSED:
            _KINDS.clear()
        hit = _KINDS[text] = value_kind(value)
    return hit
