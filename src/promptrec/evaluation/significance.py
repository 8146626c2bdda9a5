"""Paired significance tests between two runs evaluated on the same users.

Two recommenders scored on the same users give paired per-user values (NDCG@10 of user u under
run A and under run B). Pairing removes the user-to-user variance, which dominates ranking
metrics, so the tests here are on the per-user differences ``d_u = a_u - b_u``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

_BOOT_CELLS = 1 << 22  # bootstrap index draws held at once: (replicates, users) chunks of ~32 MB
_TOLERANCE = 1e-12  # differences this close to each other count as equal


def paired_test(
    a: pd.Series,
    b: pd.Series,
    n_boot: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Compare per-user values ``a`` and ``b`` (indexed by user_id; aligned on it).

    With differences ``d_u = a_u - b_u`` over the ``n`` users:

    - ``mean_a``, ``mean_b``, ``mean_diff = mean(d)``;
    - ``t_stat``, ``t_pvalue``: paired t-test (``scipy.stats.ttest_rel``),
      ``t = mean(d) / (sd(d) / sqrt(n))`` on ``n - 1`` degrees of freedom, two-sided;
    - ``wilcoxon_pvalue``: Wilcoxon signed-rank test (``scipy.stats.wilcoxon``), two-sided; zero
      differences are dropped (no assumption that ``d`` is normal, which 0/1 hit rates are not);
    - ``ci_low``, ``ci_high``: percentile bootstrap interval of ``mean(d)`` at ``confidence``,
      ``n_boot`` resamples of the users with replacement, seeded by ``seed``;
    - ``n``.

    Degenerate differences (equal up to 1e-12) are answered without scipy's warnings: all zero ->
    ``t_stat`` 0 and both p-values 1 (no evidence of a difference); all equal and non-zero (a
    constant shift) -> ``t_stat`` +-inf and ``t_pvalue`` 0. Raises ``ValueError`` when the user sets differ, an index
    has duplicates, a value is missing, or fewer than two users are given.
    """
    if a.index.has_duplicates or b.index.has_duplicates:
        raise ValueError("per-user values must have one row per user (duplicate user ids)")
    if not a.index.sort_values().equals(b.index.sort_values()):
        only_a, only_b = a.index.difference(b.index), b.index.difference(a.index)
        raise ValueError(
            f"the runs were evaluated on different users: {len(only_a)} only in the first, "
            f"{len(only_b)} only in the second (e.g. {[*only_a[:1], *only_b[:1]]})"
        )
    x = a.to_numpy(dtype=float)
    y = b.reindex(a.index).to_numpy(dtype=float)
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("per-user values contain NaN")
    n = len(x)
    if n < 2:
        raise ValueError(f"a paired test needs at least two users, got {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = x - y  # (n,)
    mean_diff = float(d.mean())

    # Float noise (0.3 - 0.2 != 0.1) must not turn a constant shift into a t statistic of 1e16.
    if np.all(np.abs(d) <= _TOLERANCE):
        t_stat, t_p, w_p = 0.0, 1.0, 1.0
    elif np.ptp(d) <= _TOLERANCE * max(1.0, float(np.abs(d).max())):
        t_stat, t_p = float(np.sign(d[0]) * np.inf), 0.0
        w_p = float(stats.wilcoxon(d).pvalue)
    else:
        t = stats.ttest_rel(x, y)
        t_stat, t_p = float(t.statistic), float(t.pvalue)
        w_p = float(stats.wilcoxon(d).pvalue)

    low, high = bootstrap_ci(d, n_boot=n_boot, seed=seed, confidence=confidence)
    return {
        "n": n,
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "mean_diff": mean_diff,
        "ci_low": low,
        "ci_high": high,
        "t_stat": t_stat,
        "t_pvalue": t_p,
        "wilcoxon_pvalue": w_p,
    }


def bootstrap_ci(d: np.ndarray, n_boot: int = 10000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(d)``: resample the ``n`` values with replacement
    ``n_boot`` times, take each resample's mean ``m_b``, and return the ``(1 - c) / 2`` and
    ``(1 + c) / 2`` quantiles of the ``m_b`` (``c = confidence``).

    Resamples are drawn as ``(replicates, n)`` index blocks of bounded size from one seeded
    generator, so the answer depends only on ``seed`` (not on memory) and stays vectorised.
    """
    d = np.asarray(d, dtype=float)
    if n_boot < 1 or len(d) == 0:
        raise ValueError("bootstrap_ci needs n_boot >= 1 and at least one value")
    rng = np.random.default_rng(seed)
    n = len(d)
    means = np.empty(n_boot)  # (n_boot,)
    block = max(1, _BOOT_CELLS // n)
    for lo in range(0, n_boot, block):
        rows = min(block, n_boot - lo)
        means[lo : lo + rows] = d[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


__all__ = ["bootstrap_ci", "paired_test"]
