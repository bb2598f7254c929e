"""pass@k: the unbiased estimator of Chen et al. 2021 and bootstrap confidence intervals.

With ``n`` samples of one problem of which ``c`` are correct, the probability that at least one
of ``k`` samples drawn without replacement is correct is (Chen et al. 2021, "Evaluating Large
Language Models Trained on Code", eq. 1 and Fig. 3)::

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

and 1 when ``n - c < k``. The product form never builds the huge binomials, so it stays exact in
floating point for n in the thousands. The suite score is the mean over problems; its uncertainty
comes from which problems were drawn, so the confidence interval resamples problems (percentile
bootstrap, Efron & Tibshirani 1993).

>>> pass_at_k(10, 0, 1)
0.0
>>> pass_at_k(10, 10, 5)
1.0
>>> round(pass_at_k(10, 3, 1), 6)
0.3
>>> round(pass_at_k(4, 1, 2), 6)
0.5
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from verirl.errors import UserError

__all__ = [
    "avg_at_n",
    "bootstrap_ci",
    "bootstrap_curve_ci",
    "maj_at_k",
    "pass_at_k",
    "pass_at_k_array",
    "pass_at_k_curve",
    "per_problem_matrix",
    "valid_ks",
]


def _check(n: int, c: int, k: int) -> None:
    if n < 1:
        raise UserError(f"pass@k needs at least one sample per problem, got n={n}")
    if not 0 <= c <= n:
        raise UserError(f"pass@k: number correct c={c} must be between 0 and n={n}")
    if k < 1:
        raise UserError(f"pass@k: k must be >= 1, got k={k}")
    if k > n:
        raise UserError(
            f"pass@k: k={k} is larger than the number of samples n={n}; "
            f"the unbiased estimator needs n >= k (sample more, or drop k={k})"
        )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (Chen et al. 2021).

    Raises ``UserError`` when ``k > n`` (the estimator is undefined), ``k < 1`` or ``c`` is outside
    ``[0, n]``.

    >>> round(pass_at_k(5, 2, 2), 6)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    0.7
    """
    _check(n, c, k)
    if n - c < k:
        return 1.0
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)
    return float(1.0 - np.prod(1.0 - k / i))


def pass_at_k_array(
    n: Sequence[int] | np.ndarray, c: Sequence[int] | np.ndarray, k: int
) -> np.ndarray:
    """Per-problem pass@k for arrays of ``n`` and ``c`` (same shape, or ``n`` a scalar).

    Returns a float64 array of the broadcast shape; raises ``UserError`` naming the first bad
    problem index when any ``k > n`` or ``c`` is out of range.

    >>> pass_at_k_array([4, 4, 4], [0, 1, 4], 2).round(6).tolist()
    [0.0, 0.5, 1.0]
    """
    n_arr, c_arr = np.broadcast_arrays(np.asarray(n, dtype=np.int64), np.asarray(c, dtype=np.int64))
    out = np.empty(n_arr.shape, dtype=np.float64)
    for idx, (ni, ci) in enumerate(zip(n_arr.ravel(), c_arr.ravel(), strict=True)):
        try:
            out.flat[idx] = pass_at_k(int(ni), int(ci), k)
        except UserError as e:
            raise UserError(f"problem #{idx}: {e}") from None
    return out


def valid_ks(ks: Sequence[int], n_min: int) -> list[int]:
    """The sorted, de-duplicated ks; raises ``UserError`` for any k < 1 or k > ``n_min``."""
    bad = [k for k in ks if k < 1 or k > n_min]
    if bad:
        raise UserError(
            f"pass@k: k values {bad} are not in [1, n={n_min}] (n = fewest samples of any "
            "problem); the unbiased estimator needs k <= n"
        )
    return sorted(set(ks))


def pass_at_k_curve(n: Sequence[int] | np.ndarray, c: Sequence[int] | np.ndarray) -> np.ndarray:
    """Mean pass@k over problems for every k = 1..min(n): element ``k-1`` is pass@k."""
    n_arr = np.asarray(n, dtype=np.int64)
    if n_arr.size == 0:
        raise UserError("pass@k: no problems to average over")
    kmax = int(n_arr.min())
    return np.array([pass_at_k_array(n, c, k).mean() for k in range(1, kmax + 1)])


def bootstrap_ci(
    per_problem: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``(lo, hi)`` of the mean of ``per_problem`` over resampled problems.

    Problems are drawn with replacement ``n_boot`` times; the interval is the ``alpha/2`` and
    ``1 - alpha/2`` quantiles of the resampled means. Deterministic for a given ``seed``.

    >>> bootstrap_ci([1.0, 1.0, 1.0])
    (1.0, 1.0)
    """
    x = np.asarray(per_problem, dtype=np.float64)
    if x.size == 0:
        raise UserError("bootstrap: no problems to resample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_curve_ci(
    per_problem: np.ndarray, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap bands for every column of a ``[P, K]`` matrix of per-problem pass@k.

    Each resample draws P problems with replacement; drawing counts from a multinomial and
    averaging with a matrix product (``[B, P] @ [P, K]``) avoids materialising ``[B, P, K]``.
    All columns share the resamples, so the bands of neighbouring k are coherent.
    Returns ``(lo, hi)``, each of shape ``[K]``.

    >>> lo, hi = bootstrap_curve_ci(np.array([[0.5, 1.0], [0.5, 1.0]]))
    >>> lo.tolist(), hi.tolist()
    ([0.5, 1.0], [0.5, 1.0])
    """
    m = np.asarray(per_problem, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] == 0:
        raise UserError(f"bootstrap: expected a non-empty [problems, k] matrix, got {m.shape}")
    p = m.shape[0]
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(p, np.full(p, 1.0 / p), size=n_boot)  # [B, P]
    means = counts @ m / p  # [B, K]
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=0)
    return lo, hi


def per_problem_matrix(n: Sequence[int] | np.ndarray, c: Sequence[int] | np.ndarray) -> np.ndarray:
    """``[P, K]`` per-problem pass@k for k = 1..K, K = min(n) (column k-1 is pass@k).

    >>> per_problem_matrix([2, 2], [1, 0]).tolist()
    [[0.5, 1.0], [0.0, 0.0]]
    """
    n_arr = np.asarray(n, dtype=np.int64)
    if n_arr.size == 0:
        raise UserError("pass@k: no problems")
    kmax = int(n_arr.min())
    return np.stack([pass_at_k_array(n, c, k) for k in range(1, kmax + 1)], axis=1)


# Above this many k-subsets, maj@k averages over this many seeded random subsets instead.
MAJ_EXACT_SUBSETS = 5000
MAJ_DRAWS = 2000


def _votes(
    clusters: Sequence[int | None], credit: Sequence[float], subsets: np.ndarray
) -> np.ndarray:
    """Credit of each k-subset's plurality answer [S] for subsets [S, k] of sample indices: ties
    split the credit evenly (the expected value of a random tie-break); samples without an answer
    abstain; no vote at all scores 0. Vectorised: one bincount over all subsets."""
    m = len(credit)
    if m == 0:
        return np.zeros(len(subsets))
    ids = np.array([m if c is None else c for c in clusters], dtype=np.int64)  # m: abstains
    s = len(subsets)
    picked = ids[subsets] + (np.arange(s, dtype=np.int64) * (m + 1))[:, None]  # [S, k]
    counts = np.bincount(picked.ravel(), minlength=s * (m + 1)).reshape(s, m + 1)[:, :m]
    top = counts.max(axis=1, keepdims=True)  # [S, 1]
    winners = (counts == top) & (top > 0)  # [S, m]
    n_win = winners.sum(axis=1)
    won = (winners * np.asarray(credit, dtype=np.float64)).sum(axis=1)
    return np.where(n_win > 0, won / np.maximum(n_win, 1), 0.0)


def maj_at_k(
    clusters: Sequence[int | None], credit: Sequence[float], k: int, *, seed: int = 0
) -> float:
    """maj@k for one problem: the chance that the majority answer of k of its n samples, drawn
    without replacement, is correct (self-consistency, Wang et al. 2023, arXiv:2203.11171).

    ``clusters[i]`` is sample i's answer cluster (equivalent answers share an id; None: no
    answer, which abstains), ``credit[c]`` the correctness of cluster c in [0, 1] (the share of
    its samples the checker accepted: 1 or 0 when the checker is consistent). The value is the
    mean over all C(n, k) subsets, exact when there are at most ``MAJ_EXACT_SUBSETS`` of them,
    else over ``MAJ_DRAWS`` seeded random subsets. maj@1 equals the mean credit, i.e. pass@1.

    >>> maj_at_k([0, 0, 1], [1.0, 0.0], 3)  # votes 2:1 for the right answer
    1.0
    >>> round(maj_at_k([0, 0, 1], [1.0, 0.0], 2), 6)  # {0,0}: 1, {0,1} twice: a tie, ½ each
    0.666667
    >>> maj_at_k([0, 1, None], [0.0, 1.0], 3)  # a 1:1 tie between a wrong and a right answer
    0.5
    """
    from itertools import combinations
    from math import comb

    n = len(clusters)
    _check(n, 0, k)
    if comb(n, k) <= MAJ_EXACT_SUBSETS:
        subsets = np.array(list(combinations(range(n), k)), dtype=np.int64).reshape(-1, k)
    else:  # k of n without replacement per draw: the first k of a random permutation
        rng = np.random.default_rng(seed)
        subsets = np.argsort(rng.random((MAJ_DRAWS, n)), axis=1)[:, :k]
    return float(np.mean(_votes(clusters, credit, subsets)))


def avg_at_n(n: Sequence[int] | np.ndarray, c: Sequence[int] | np.ndarray) -> float:
    """avg@n: accuracy averaged over all n samples of every problem, mean_p c_p / n_p (what
    DeepSeek-R1 reports as "pass@1 averaged over n samples"); numerically the unbiased pass@1.

    >>> avg_at_n([4, 2], [1, 2])
    0.625
    """
    n_arr, c_arr = np.asarray(n, dtype=np.float64), np.asarray(c, dtype=np.float64)
    if n_arr.size == 0 or (n_arr < 1).any():
        raise UserError("avg@n: every problem needs at least one sample")
    return float((c_arr / n_arr).mean())
