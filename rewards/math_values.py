"""Fail-closed rules on parsed answers: which sympy values may take part in a comparison at all.

A reward that compares ``simplify(a - b) == 0`` is gamed by any value that makes the difference
meaningless: ``1/0`` is ``zoo`` and ``zoo - 5`` is ``zoo`` again, ``nan`` compares equal to itself,
``\\infty - \\infty`` is ``nan``. So, before any comparison, each parsed value gets a kind:

- ``bad``: never equal to anything. Not a sympy object (``True`` parses to Python's ``True``,
  ``N`` to a function), a boolean or logical formula, an identity or contradiction (``x = x``,
  ``0 = 0``), or anything whose evaluation holds ``zoo``/``nan`` (``1/0``, ``\\log 0``, ``(-1)!``,
  ``\\tan(\\pi/2)``, ``0 \\cdot \\infty``) or an undefined power ``0^0``/``0^{-1}``;
- ``infinite``: holds ``±oo`` after evaluation; equal only to an infinite gold;
- ``finite``: everything else.

`admissible` applies the rules to a (prediction, gold) pair; `verirl.rewards.math_equiv` calls it
on every parsed pair, and separately refuses a prediction whose free symbols the gold does not
have (``x`` is not a value of ``5``).

Evaluation is skipped for constants too large to evaluate (``9^{9^{9^9}}``); those are compared
by structure only, so they cannot reach ``zoo`` through evaluation either.
"""

from __future__ import annotations

import math
from typing import Any, Literal

Kind = Literal["finite", "infinite", "bad"]
ASTRONOMICAL = 100_000  # digits; 2^{65536} (19,729 digits) is still compared exactly
_MAX_OPS = 400  # nodes; larger trees are not evaluated here (the deadline guards the comparison)


def value_kind(v: Any) -> Kind:
    """The kind of one parsed value (see the module docstring).

    >>> import sympy
    >>> x = sympy.Symbol("x")
    >>> [value_kind(e) for e in (sympy.Integer(5), sympy.zoo, sympy.oo, True, sympy.Eq(x, x))]
    ['finite', 'bad', 'infinite', 'bad', 'bad']
    >>> value_kind(sympy.Pow(0, 0, evaluate=False)), value_kind(sympy.log(0, evaluate=False))
    ('bad', 'bad')
    """
    import sympy

    if isinstance(v, sympy.MatrixBase):  # a mutable Matrix is no Basic
        return _worst(value_kind(e) for e in v)
    if isinstance(v, bool) or not isinstance(v, sympy.Basic):
        return "bad"
    if isinstance(v, (sympy.Tuple, sympy.FiniteSet)):
        return _worst(value_kind(e) for e in v.args)
    if isinstance(v, sympy.Set):
        kinds = [value_kind(e) for e in v.args if isinstance(e, sympy.Expr)]
        return "bad" if "bad" in kinds else "finite"  # (-oo, 3] is a finite answer
    if isinstance(v, sympy.Rel):
        sides = (v.lhs, v.rhs)
        if isinstance(v, sympy.Eq) and _is_zero(v.lhs - v.rhs):
            return "bad"  # x = x holds for all x: it names no value
        return _worst(value_kind(e) for e in sides)
    if isinstance(v, sympy.Expr):  # before Boolean: a Symbol is both
        return _expr_kind(v, sympy)
    return "bad"  # true, false, And/Or/Not, anything else


def _expr_kind(v: Any, sympy: Any) -> Kind:
    undefined = (sympy.zoo, sympy.nan)
    if v.has(*undefined) or _undefined_power(v, sympy):
        return "bad"
    evaluated = v
    if digits(v, sympy) <= ASTRONOMICAL and _small(v, _MAX_OPS):
        try:
            evaluated = v.doit()
        except Exception:
            return "bad"  # an expression that cannot even be evaluated has no value
        if not isinstance(evaluated, sympy.Expr) or evaluated.has(*undefined):
            return "bad"
    if evaluated.has(sympy.oo, -sympy.oo) or evaluated.is_infinite:
        return "infinite"
    return "finite"


def _small(v: Any, limit: int) -> bool:
    """Has the tree at most `limit` nodes? (a bounded walk; sympy's count_ops costs more)."""
    stack, seen = [v], 0
    while stack:
        seen += 1
        if seen > limit:
            return False
        stack.extend(a for a in stack.pop().args if hasattr(a, "args"))
    return True


def _undefined_power(v: Any, sympy: Any) -> bool:
    """Indeterminate forms the parser leaves unevaluated and sympy would give a value:
    0^0 (sympy: 1), ∞^0 (1), 1^∞, 0^{-k}, \\log_0 5 (sympy: 0), \\log_1 2, \\log 0."""
    for p in v.atoms(sympy.Pow):
        base, expo = p.args
        if base == 0 and expo.is_positive is not True:  # 0^0, 0^{-1}, 0^x
            return True
        if (base.is_infinite and expo == 0) or (base == 1 and expo.is_infinite):
            return True
    for lg in v.atoms(sympy.log):
        if lg.args[0] == 0 or (len(lg.args) == 2 and lg.args[1] in (0, 1)):
            return True
    return False


def _is_zero(e: Any) -> bool:
    import sympy

    try:
        return bool(sympy.expand(e) == 0)
    except Exception:
        return False


def _worst(kinds: Any) -> Kind:
    seen = set(kinds)
    if "bad" in seen:
        return "bad"
    return "infinite" if "infinite" in seen else "finite"


def admissible(pred: Any, gold: Any, kp: Kind | None = None, kg: Kind | None = None) -> bool:
    """May `pred` be compared with `gold` at all? Both must have a value, and an infinite one
    only meets an infinite one. `kp`/`kg` are the kinds when the caller has them already.

    >>> import sympy
    >>> admissible(sympy.zoo, sympy.Integer(5)), admissible(sympy.oo, sympy.Integer(5))
    (False, False)
    >>> admissible(sympy.oo, sympy.oo), admissible(sympy.Integer(2), sympy.sqrt(4))
    (True, True)
    """
    kp = kp or value_kind(pred)
    kg = kg or value_kind(gold)
    if "bad" in (kp, kg):
        return False
    return kp == kg


def digits(e: Any, sympy: Any) -> float:
    """An estimate of log10 of a constant's magnitude (or of its reciprocal's), from its tree
    alone, never evaluating it: 9^{9^{9^9}} → inf, 100000! → 4.6e5, 2^{65536} → 19729."""
    if e.is_Integer:
        return math.log10(abs(int(e))) if e != 0 else 0.0
    if e.is_Rational:
        return max(math.log10(abs(int(e.p))), math.log10(int(e.q)))
    if e.is_Pow:
        base, expo = e.args
        if expo.is_Rational and abs(expo) < 10**15:
            x = abs(float(expo))
        else:
            d_exp = digits(expo, sympy)
            if d_exp > 15:
                return math.inf
            x = 10**d_exp
        return x * max(digits(base, sympy), 0.0)
    if isinstance(e, (sympy.factorial, sympy.gamma)):
        d_n = digits(e.args[0], sympy)
        return math.inf if d_n > 15 else (10**d_n) * max(d_n, 1.0)
    if not e.args:
        return 1.0
    parts = [digits(a, sympy) for a in e.args if isinstance(a, sympy.Basic)]
    if not parts:
        return 1.0
    return sum(parts) if e.is_Mul else max(parts) + 1
