"""The unbiased Pass@k estimator and bootstrap intervals over problems.

Pass@k of one problem with ``n`` samples of which ``c`` are correct (Chen et al. 2021,
"Evaluating Large Language Models Trained on Code", eq. 1) is

    1 - C(n - c, k) / C(n, k)

the chance that k samples drawn without replacement from the n hold at least one correct
one. Binomials overflow for large n, so it is computed as the product
``1 - prod_{i = n-c+1}^{n} (1 - k / i)`` (the paper's numpy form), which is exact in real
arithmetic and stable in floating point.
"""

from __future__ import annotations

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k of one problem: ``n`` samples, ``c`` correct, ``1 <= k <= n``."""
    if not 0 <= c <= n:
        raise ValueError(f"c={c} correct of n={n} samples: expected 0 <= c <= n")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} with n={n} samples: Pass@k needs 1 <= k <= n; draw more samples or lower k")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_array(n: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """Pass@k per problem.

    Parameters
    ----------
    n, c : array-like of int, shape (P,)
        Samples and correct samples of each problem.
    k : int, at most ``min(n)``

    Returns
    -------
    ndarray of shape (P,), float64
    """
    n = np.asarray(n, dtype=np.int64)
    c = np.asarray(c, dtype=np.int64)
    return np.array([pass_at_k(int(a), int(b), k) for a, b in zip(n, c)], dtype=np.float64)


def default_k_values(n: int) -> list[int]:
    """Powers of two up to ``n``: ``[1, 2, 4, ..., 2**floor(log2 n)]``."""
    if n < 1:
        raise ValueError(f"n={n}: need at least one sample per problem")
    return [1 << i for i in range(int(np.floor(np.log2(n))) + 1)]


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (shape (P,)), resampling problems.

    Paired comparisons pass per-problem differences (same problems, same order), so the
    problems' shared difficulty cancels. Returns (nan, nan) for an empty input and
    (mean, mean) for a single problem.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))  # (B, P)
    means = v[idx].mean(axis=1)  # (B,)
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(lo), float(hi)
