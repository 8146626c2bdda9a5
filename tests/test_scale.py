"""The synthetic log generator and the scaling bench's arithmetic and quick run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from promptrec.data import leave_one_out, load_dataset
from promptrec.data.loaders.synthetic import history_lengths

BENCH = Path(__file__).resolve().parents[1] / "bench" / "scale.py"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_log_has_the_asked_shape_and_is_seeded() -> None:
    data = load_dataset("synthetic", users=500, items=300, mean_length=12, seed=3)
    lengths = data.interactions.groupby("user_id").size()
    assert data.n_users == 500 and data.n_items == 300  # the whole catalogue, drawn or not
    assert lengths.min() >= 3  # everyone is evaluated by leave-one-out
    assert 10 < lengths.mean() < 14
    assert len(leave_one_out(data).test) == 500
    again = load_dataset("synthetic", users=500, items=300, mean_length=12, seed=3)
    assert again.interactions.equals(data.interactions)
    other = load_dataset("synthetic", users=500, items=300, mean_length=12, seed=4)
    assert not other.interactions.equals(data.interactions)


def test_synthetic_popularity_is_a_power_law_not_the_id_order() -> None:
    data = load_dataset("synthetic", users=4000, items=1000, popularity=1.0, seed=0)
    counts = data.interactions["item_id"].value_counts()
    # Zipf with exponent 1: the top item is drawn about 1 / H(1000) = 13 % of the time, the
    # tenth about a tenth of that.
    share = counts.iloc[0] / counts.sum()
    assert 0.10 < share < 0.17
    assert 6 < counts.iloc[0] / counts.iloc[9] < 15
    assert counts.index[0] != "i0"  # ranks go to a seeded permutation of the ids
    flat = load_dataset("synthetic", users=4000, items=1000, popularity=0.0, seed=0)
    assert flat.interactions["item_id"].value_counts().iloc[0] / counts.sum() < 0.01


def test_history_lengths_are_heavy_tailed_with_the_asked_mean() -> None:
    lengths = history_lengths(200_000, 15.0, 3, 1000, 1.0, np.random.default_rng(0))
    assert lengths.min() == 3
    assert abs(lengths.mean() - 15.0) < 0.3
    assert np.median(lengths) < lengths.mean()  # a long right tail
    assert np.quantile(lengths, 0.999) > 5 * lengths.mean()


def test_synthetic_rejects_impossible_shapes() -> None:
    with pytest.raises(ValueError, match="min_length"):
        load_dataset("synthetic", users=10, items=10, mean_length=2, min_length=3)
    with pytest.raises(ValueError, match="positive"):
        load_dataset("synthetic", users=0, items=10)


def test_growth_exponent_of_each_step(scale) -> None:
    sizes = [10, 100, 1000]
    assert scale.growth_exponents(sizes, [1.0, 10.0, 1000.0]) == [1.0, 2.0]
    assert scale.growth_exponents(sizes, [2.0, None, 8.0]) == [None, None]
    assert scale.growth_exponents([10, 1000], [5.0, 5.0]) == [0.0]


def test_the_bench_runs_a_small_grid(scale, tmp_path, monkeypatch) -> None:
    out = tmp_path / "scale.json"
    argv = [
        "scale.py", "--users", "200", "400", "--items", "100", "200", "--base-users", "200",
        "--base-items", "100", "--models", "popularity", "itemknn", "bpr", "--bpr-steps", "2",
        "--indexers", "random", "--eval-users", "100", "--output", str(out),
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    scale.main()
    result = json.loads(out.read_text())
    assert [(c["users"], c["items"]) for c in result["cells"]] == [(200, 100), (200, 200), (400, 100)]
    for cell in result["cells"]:
        for name, run in {**cell["models"], **cell["indexers"]}.items():
            assert "error" not in run, (name, run)
            assert run["fit_seconds"] > 0 and run["peak_rss_mb"] > 0
        assert 0 < cell["models"]["bpr"]["train_examples"] <= 2 * 1024  # two steps of 1024
        assert cell["models"]["itemknn"]["eval_users"] == 100  # a block of the users
        assert cell["models"]["itemknn"]["eval_extrapolated"] is True
    users = result["growth"]["users"]
    assert users["sizes"] == [200, 400]
    assert len(users["runs"]["itemknn"]["fit_seconds"]["exponents"]) == 1
