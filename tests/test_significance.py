"""Paired tests on synthetic per-user values whose answer is known."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from promptrec.evaluation import significance
from promptrec.evaluation.significance import bootstrap_ci, paired_test

USERS = [f"u{i}" for i in range(200)]


def values(seed: int, n: int = 200) -> pd.Series:
    return pd.Series(np.random.default_rng(seed).random(n), index=USERS[:n])


def test_identical_runs_give_no_difference() -> None:
    a = values(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # degenerate input is handled, not warned about
        out = paired_test(a, a.copy(), n_boot=500)
    assert out["n"] == 200 and out["mean_diff"] == 0.0
    assert out["t_stat"] == 0.0 and out["t_pvalue"] == 1.0 and out["wilcoxon_pvalue"] == 1.0
    assert out["ci_low"] == out["ci_high"] == 0.0


def test_constant_shift_is_significant() -> None:
    b = values(1)
    out = paired_test(b + 0.1, b, n_boot=500)
    assert out["mean_diff"] == pytest.approx(0.1)
    assert out["t_stat"] == np.inf and out["t_pvalue"] == 0.0
    assert out["wilcoxon_pvalue"] < 1e-6
    assert out["ci_low"] == pytest.approx(0.1) and out["ci_high"] == pytest.approx(0.1)


def test_noisy_shift_matches_scipy_and_normal_theory() -> None:
    rng = np.random.default_rng(2)
    b = values(3)
    a = b + 0.05 + pd.Series(rng.normal(0.0, 0.1, len(b)), index=b.index)
    out = paired_test(a, b, n_boot=4000, seed=7)
    d = (a - b).to_numpy()
    ref = stats.ttest_rel(a.to_numpy(), b.to_numpy())
    assert out["mean_diff"] == pytest.approx(d.mean())
    assert out["t_stat"] == pytest.approx(ref.statistic) and out["t_pvalue"] == pytest.approx(ref.pvalue)
    assert out["wilcoxon_pvalue"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert out["t_pvalue"] < 1e-10
    # The bootstrap interval: around the mean, about as wide as the normal one (1.96 standard errors).
    assert out["ci_low"] < d.mean() < out["ci_high"]
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert (out["ci_high"] - out["ci_low"]) / 2 == pytest.approx(half, rel=0.15)


def test_aligned_on_user_id_and_seeded() -> None:
    a, b = values(4), values(5)
    shuffled = b.sample(frac=1.0, random_state=0)
    assert paired_test(a, shuffled, n_boot=300) == paired_test(a, b, n_boot=300)
    assert paired_test(a, b, n_boot=300, seed=1) != paired_test(a, b, n_boot=300, seed=2)


def test_bad_inputs_raise() -> None:
    a = values(6)
    with pytest.raises(ValueError, match="different users"):
        paired_test(a, a.iloc[:-1])
    with pytest.raises(ValueError, match="duplicate"):
        paired_test(pd.concat([a, a.iloc[:1]]), pd.concat([a, a.iloc[:1]]))
    with pytest.raises(ValueError, match="NaN"):
        paired_test(a.where(a > 0.1), a)
    with pytest.raises(ValueError, match="at least two"):
        paired_test(a.iloc[:1], a.iloc[:1])


def test_bootstrap_ci_blocks_do_not_change_the_draws() -> None:
    """The resamples are drawn in blocks of bounded size; at a size that splits into several
    blocks (the last one partial) the interval must be the one a plain, one resample at a time
    computation gives from the same seeded generator."""
    n, n_boot, seed = 3000, 4000, 3
    block = significance._BOOT_CELLS // n
    assert 2 * block < n_boot < 3 * block  # three blocks, the last one partial
    d = np.random.default_rng(8).normal(size=n)
    rng = np.random.default_rng(seed)
    means = np.array([d[rng.integers(0, n, size=n)].mean() for _ in range(n_boot)])  # (n_boot,)
    expected = np.quantile(means, [0.025, 0.975])
    low, high = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    assert (low, high) == pytest.approx(tuple(expected), rel=1e-12, abs=1e-15)
    assert low < d.mean() < high
