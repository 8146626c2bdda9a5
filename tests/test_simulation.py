"""The feedback-loop simulator on a small synthetic catalogue whose ground truth is known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from promptrec.evaluation.beyond import gini, intra_list_diversity as beyond_ild
from promptrec.data import InteractionData
from promptrec.data.split import Split
from promptrec.core.recommender import RECOMMENDERS
from promptrec.models.classic.popularity import MostPopular
from promptrec.simulation import SimulationConfig, build_world, fit_oracle, run_one
from promptrec.simulation.choice import ChoiceModel, UserState, chance_level
from promptrec.simulation.interventions import SlateContext, build_intervention, popularity_groups
from promptrec.simulation.loop import Job, drop_skipped, jobs
from promptrec.simulation.metrics import heldout_accuracy, intra_list_diversity
from promptrec.simulation.oracle import Oracle, expected_calibration_error

TIMING = ("round_seconds", "recommend_seconds", "intervention_seconds", "eval_seconds", "update_seconds")


def synthetic_data(n_users: int = 80, n_items: int = 60, per_user: int = 15, seed: int = 0) -> InteractionData:
    """Users and items with 2-d tastes in four genre clusters; ratings follow the taste match."""
    rng = np.random.default_rng(seed)
    genre = np.arange(n_items) % 4
    angles = genre * np.pi / 2 + rng.normal(0, 0.3, n_items)
    item_vec = np.stack([np.cos(angles), np.sin(angles)], 1)
    user_vec = rng.normal(0, 1, (n_users, 2))
    quality = rng.normal(0, 0.7, n_items)
    rows = []
    for u in range(n_users):
        # Users rate items they like more often, as in real logs, plus some at random.
        affinity = user_vec[u] @ item_vec.T + quality
        chosen = rng.choice(n_items, per_user, replace=False, p=np.exp(affinity) / np.exp(affinity).sum())
        for t, i in enumerate(chosen):
            stars = np.clip(np.round(3 + 1.2 * affinity[i] + rng.normal(0, 0.5)), 1, 5)
            rows.append((f"u{u}", f"i{i}", t, stars))
    names = ["Action", "Drama", "Comedy", "Horror"]
    items = pd.DataFrame(
        {"item_id": [f"i{i}" for i in range(n_items)], "categories": [[names[g]] for g in genre]}
    ).set_index("item_id")
    users = pd.DataFrame(
        {"age": rng.integers(18, 60, n_users), "gender": rng.choice(["M", "F"], n_users)},
        index=pd.Index([f"u{u}" for u in range(n_users)], name="user_id"),
    )
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    return InteractionData(interactions, items, users=users, name="synthetic")


def small_config(**overrides) -> SimulationConfig:
    base = {
        "oracle": {"factors": 4, "epochs": 300, "lr": 0.05, "reg": 0.05, "patience": 30},
        "rounds": 6, "slate_size": 5, "candidates": 10, "eval_k": 5,
        "recommenders": [{"name": "popularity"}],
    }  # fmt: skip
    base.update(overrides)
    return SimulationConfig.model_validate(base)


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


@pytest.fixture(scope="module")
def world(data, tmp_path_factory):
    return build_world(small_config(), tmp_path_factory.mktemp("oracle"), data=data)


def _run(cfg, world, tmp_path, name="popularity", update=None, intervention=None, seed=0, **kw):
    rec = next(r for r in cfg.recommenders if r.key == name)
    job = Job(rec, update or cfg.updates[0], intervention or cfg.interventions[0], seed)
    return run_one(cfg, job, world, tmp_path / job.name, progress=False, **kw)


def _without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# -- the oracle --------------------------------------------------------------------------------
def test_oracle_learns_the_synthetic_tastes_and_round_trips(world, tmp_path):
    info = world.oracle.info
    assert info["report_auc"] > 0.7  # the ratings follow the taste match, so it is learnable
    assert info["report_ece"] < 0.15
    world.oracle.save(tmp_path)
    back = Oracle.load(tmp_path)
    users, items = np.array([0, 3, 5]), np.array([1, 2, 7])
    np.testing.assert_allclose(back.prob(users, items), world.oracle.prob(users, items), rtol=1e-6)
    np.testing.assert_allclose(world.oracle.prob_rows(users)[np.arange(3), items], world.oracle.prob(users, items), rtol=1e-5)


def test_expected_calibration_error_by_hand():
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([0.0, 1.0, 1.0, 1.0])
    # bin 0: mean p 0.05, rate 0.5 -> gap 0.45 on half; bin 9: 0.95 vs 1.0 -> 0.05 on half
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)


# -- sanity of the whole loop ------------------------------------------------------------------
def test_oracle_ranking_satisfies_most_and_random_least(world, tmp_path):
    cfg = small_config(recommenders=[{"name": "oracle"}, {"name": "popularity"}, {"name": "itemknn"}, {"name": "random"}])
    satisfaction = {}
    for rec in cfg.recommenders:
        rows = _run(cfg, world, tmp_path, rec.key)
        satisfaction[rec.key] = np.nanmean([r["satisfaction"] for r in rows])
    assert satisfaction["oracle"] == max(satisfaction.values())
    assert satisfaction["random"] == min(satisfaction.values())


def test_same_seed_same_rounds_and_other_seed_differs(world, tmp_path):
    cfg = small_config(updates=[{"strategy": "retrain", "every": 2}])
    first = _run(cfg, world, tmp_path / "a")
    second = _run(cfg, world, tmp_path / "b")
    other = _run(cfg, world, tmp_path / "c", seed=1)
    assert _without_timing(first) == _without_timing(second)
    assert _without_timing(first) != _without_timing(other)


def test_resume_gives_the_rounds_of_an_uninterrupted_run(world, tmp_path):
    cfg = small_config(recommenders=[{"name": "itemknn"}], updates=[{"strategy": "retrain", "every": 2}])
    whole = _run(cfg, world, tmp_path / "whole", "itemknn")
    _run(cfg.update({"rounds": 3}), world, tmp_path / "parts", "itemknn")
    resumed = _run(cfg, world, tmp_path / "parts", "itemknn", resume=True)
    assert len(resumed) == cfg.rounds
    assert _without_timing(resumed) == _without_timing(whole)
    with pytest.raises(FileExistsError):
        _run(cfg, world, tmp_path / "parts", "itemknn")


# -- no recommender ever sees the oracle --------------------------------------------------------
@RECOMMENDERS.register("spy_simulation")
class Spy(MostPopular):
    """Popularity that records every split it is fitted on and every history it is given."""

    name = "spy_simulation"
    seen_splits: list[Split] = []
    seen_histories: list[dict] = []

    def fit(self, split):
        Spy.seen_splits.append(split)
        return super().fit(split)

    def _build_index(self):
        Spy.seen_histories.append(self.histories_["test"])
        super()._build_index()


def _reachable(obj, depth=0, seen=None):
    """Every object reachable from ``obj`` through attributes, dict values and list items."""
    seen = seen if seen is not None else set()
    if id(obj) in seen or depth > 6:
        return
    seen.add(id(obj))
    yield obj
    children = []
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (pd.DataFrame, pd.Series, pd.Index, np.ndarray, type)):
        children = list(vars(obj).values())
    for child in children:
        yield from _reachable(child, depth + 1, seen)


def test_recommenders_see_only_the_log_never_the_oracle(world, tmp_path):
    Spy.seen_splits.clear()
    Spy.seen_histories.clear()
    cfg = small_config(recommenders=[{"name": "spy_simulation"}], updates=[{"strategy": "retrain", "every": 2}])
    _run(cfg, world, tmp_path, "spy_simulation")
    assert len(Spy.seen_splits) == 3  # the initial fit and the retrains after rounds 2 and 4
    heldout = {
        (world.users[u], world.items[i]) for u, i in enumerate(world.heldout) if i >= 0
    }
    initial = world.initial_log
    initial_pairs = set(zip(world.users[initial["user"]], world.items[initial["item"]]))
    for split in Spy.seen_splits:
        for obj in _reachable(split):
            assert not isinstance(obj, (Oracle, ChoiceModel, UserState))
        frame = split.data.interactions
        assert list(frame.columns) == ["user_id", "item_id", "timestamp", "rating"]
        assert set(frame["rating"].dropna().unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}  # real stars or the log's 2 / 4
        pairs = set(zip(frame["user_id"], frame["item_id"]))
        assert not pairs & heldout  # no model ever trains on a held-out target
        assert initial_pairs <= pairs  # the log starts from the real training events
    # The first fit sees exactly the real training events; later ones the log grown by clicks.
    assert len(Spy.seen_splits[0].data.interactions) == len(initial)
    assert len(Spy.seen_splits[-1].data.interactions) > len(initial)
    for histories in Spy.seen_histories:
        assert all(isinstance(h, list) and all(isinstance(i, str) for i in h) for h in histories.values())


# -- interventions -----------------------------------------------------------------------------
def _candidates(world, n_users=30, m=20):
    """Popularity candidates of the first users: a ranking that repeats itself across users."""
    order = np.argsort(-world.popularity, kind="stable")
    cands = np.tile(order[:m], (n_users, 1))
    ctx = SlateContext(world.genres, world.popularity * 100, [np.zeros(0, dtype=np.int64)] * n_users, len(world.items))
    return cands, ctx


def test_mmr_raises_intra_list_diversity(world):
    cands, ctx = _candidates(world)
    # A ranking that puts one genre first: the top 5 are all alike.
    genre = world.genres.argmax(1)
    cands = np.tile(np.lexsort((-world.popularity, genre))[:20], (len(cands), 1))
    rng = np.random.default_rng(0)
    plain = build_intervention("none").apply(cands, 5, ctx, rng)
    mmr = build_intervention("mmr", lam=0.3).apply(cands, 5, ctx, rng)
    assert intra_list_diversity(mmr, world.genres) > intra_list_diversity(plain, world.genres)
    assert all(set(row) <= set(cands[0]) for row in mmr)  # re-ranks, never invents items


def test_exploration_raises_coverage(world):
    cands, ctx = _candidates(world)
    plain = build_intervention("none").apply(cands, 5, ctx, np.random.default_rng(0))
    for name, params in [("epsilon", {"epsilon": 0.5}), ("sample", {"temperature": 5.0})]:
        explored = build_intervention(name, **params).apply(cands, 5, ctx, np.random.default_rng(0))
        assert len(np.unique(explored)) > len(np.unique(plain)), name
        assert all(len(set(row)) == 5 for row in explored)  # no item twice in a slate


def test_calibration_moves_slates_towards_the_users_popularity_mix(world):
    cands, ctx = _candidates(world, m=len(world.items))  # tail items among the candidates too
    groups = popularity_groups(ctx.log_counts)
    tail_lovers = [np.flatnonzero(groups == 2)[:5]] * len(cands)  # histories made of tail items
    ctx = SlateContext(ctx.genres, ctx.log_counts, tail_lovers, ctx.n_items)
    plain = build_intervention("none").apply(cands, 5, ctx, np.random.default_rng(0))
    calibrated = build_intervention("calibration", lam=0.9).apply(cands, 5, ctx, np.random.default_rng(0))
    assert world.popularity[calibrated].mean() < world.popularity[plain].mean()


def test_popularity_groups_by_share_of_interactions():
    counts = np.array([50, 30, 10, 5, 3, 2])  # total 100
    # head: items making up the first 20 % of interactions (the top item alone is 50 %: still head);
    # tail: those beyond 80 % cumulative (10 + 5 + 3 + 2 start after 80 + ...)
    assert popularity_groups(counts).tolist() == [0, 1, 2, 2, 2, 2]


# -- metrics with known answers ----------------------------------------------------------------
def test_intra_list_diversity_matches_the_evaluation_helper():
    genres = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8], [0, 0]], dtype=np.float32)
    slates = np.array([[0, 1, 2], [3, 4, -1]])
    # user 0: pairs (0,1) 1, (0,2) 0, (1,2) 1 -> 2/3; user 1: item 4 has no genre, slot 3 empty -> no pair
    assert intra_list_diversity(slates, genres) == pytest.approx(2 / 3)
    recs = pd.DataFrame({"user_id": ["a"] * 3 + ["b"] * 2, "item_id": ["0", "1", "2", "3", "4"], "rank": [1, 2, 3, 1, 2]})
    embeddings = pd.DataFrame(genres, index=[str(i) for i in range(5)])
    assert beyond_ild(recs, embeddings=embeddings) == pytest.approx(2 / 3)


def test_heldout_accuracy_by_hand():
    ranked = np.array([[3, 1, 2], [5, 6, 7], [9, 8, 4]])
    targets = np.array([1, 0, 4])
    acc = heldout_accuracy(ranked, targets)
    assert acc["HR"] == pytest.approx(2 / 3)
    assert acc["NDCG"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(4)) / 3)


def test_round_metrics_on_a_known_round(world, tmp_path):
    cfg = small_config(rounds=1, recommenders=[{"name": "random"}])
    row = _run(cfg, world, tmp_path, "random")[0]
    n_users = len(world.users)
    assert row["users"] == n_users and 0 <= row["ctr"] <= 1 and row["conversion"] <= row["ctr"]
    assert row["retention"] == 1.0  # nobody can leave before leave_patience bad rounds
    assert 0 < row["coverage"] <= 1 and 0 <= row["gini"] <= 1
    for grouping in ("activity", "gender", "age"):
        assert f"gap[{grouping}]_popularity" in row
    assert gini([1, 1, 1, 1]) == 0.0  # the helper the exposure Gini uses


# -- the choice model --------------------------------------------------------------------------
def test_users_click_less_on_repeated_items_and_lower_slots(world):
    cfg = small_config().choice.model_copy(update={"repeat_decay": 0.2, "similarity_fatigue": 0.0})
    model = ChoiceModel(world.oracle, world.genres, cfg)
    users = np.repeat(np.arange(len(world.users)), 50)  # many draws per user
    slates = np.tile(np.arange(5), (len(users), 1))
    state = UserState.initial(len(world.users), world.genres.shape[1])
    first = model.react(state, users, slates, np.random.default_rng(0))
    again = model.react(state, users, slates, np.random.default_rng(1))
    assert again.clicked.mean() < 0.5 * first.clicked.mean()
    assert np.all(np.diff(first.examined.mean(0)) < 0)  # position bias
    assert first.converted.sum() <= first.clicked.sum()


def test_leaving_is_relative_to_each_users_chance_level(world):
    p = world.oracle.prob_rows(np.arange(len(world.users)))
    assert np.allclose(chance_level(world.oracle, chunk=7), (p**2).mean(1))
    model = ChoiceModel(world.oracle, world.genres, small_config().choice)
    assert np.allclose(model.threshold, 0.9 * model.chance)
    assert np.allclose(model.initial_state().satisfaction, model.chance)
    absolute = small_config().choice.model_copy(update={"leave_baseline": "absolute", "leave_threshold": 0.2})
    model = ChoiceModel(world.oracle, world.genres, absolute)
    assert np.all(model.threshold == 0.2) and np.all(model.initial_state().satisfaction == 0.5)


def test_users_leave_random_slates_before_oracle_ones(world, tmp_path):
    cfg = small_config(rounds=15, recommenders=[{"name": "oracle"}, {"name": "random"}])
    retention = {rec.key: _run(cfg, world, tmp_path, rec.key)[-1]["retention"] for rec in cfg.recommenders}
    assert retention["oracle"] > retention["random"]


def test_drop_skipped_keeps_the_order_of_the_rest():
    state = UserState.initial(2, 0)
    state.add_shown(np.array([0 * 10 + 3, 0 * 10 + 3, 1 * 10 + 5]))  # user 0 saw item 3 twice, user 1 item 5 once
    cands = np.array([[1, 3, 2, -1], [5, 4, 3, 0]])
    out = drop_skipped(cands, np.array([0, 1]), state, 10, limit=2)
    assert out.tolist() == [[1, 2, -1, -1], [5, 4, 3, 0]]
    assert drop_skipped(cands, np.array([0, 1]), state, 10, limit=1).tolist() == [[1, 2, -1, -1], [4, 3, 0, -1]]


def test_skip_limit_one_never_shows_an_item_twice(world, tmp_path):
    cfg = small_config(rounds=5, skip_limit=1, recommenders=[{"name": "itemknn"}])
    _run(cfg, world, tmp_path, "itemknn")
    state = np.load(next(tmp_path.glob("*/checkpoint/state.npz")))
    assert state["shown_counts"].max() == 1
    cfg = small_config(rounds=5, skip_limit=None, recommenders=[{"name": "itemknn"}])
    _run(cfg, world, tmp_path / "off", "itemknn")
    assert np.load(next((tmp_path / "off").glob("*/checkpoint/state.npz")))["shown_counts"].max() > 1


def test_grid_runs_reference_policies_once(tmp_path):
    cfg = small_config(
        recommenders=[{"name": "oracle"}, {"name": "popularity"}],
        updates=[{"strategy": "none"}, {"strategy": "retrain", "every": 2}], seeds=[0, 1],
    )  # fmt: skip
    names = [j.name for j in jobs(cfg)]
    assert len(names) == 2 + 4 and len(set(names)) == len(names)


def test_simulate_writes_rounds_plots_and_summary(data, tmp_path, monkeypatch):
    from promptrec.simulation import loop

    cfg = small_config(rounds=3, recommenders=[{"name": "popularity"}, {"name": "random"}])
    monkeypatch.setattr(loop, "build_world", lambda cfg, oracle_dir=None, data_=None: build_world(cfg, oracle_dir, data=data))
    table = loop.simulate(cfg, tmp_path, progress=False)
    assert len(table) == 2 * 3
    lines = (tmp_path / "rounds.jsonl").read_text().splitlines()
    assert {json.loads(line)["recommender"] for line in lines} == {"popularity", "random"}
    assert (tmp_path / "plots" / "ctr.png").stat().st_size > 1000
    summary = (tmp_path / "summary.md").read_text()
    assert "popularity" in summary and "report_auc" in summary


def test_oracle_is_fit_on_all_real_events_with_ratings(data):
    oracle = fit_oracle(data, small_config().oracle)
    assert oracle.info["observations"] == len(data.interactions)
    assert set(oracle.users) == set(data.interactions["user_id"])


def test_ml100k_user_groups_come_from_the_user_table():
    from conftest import shared_dataset
    from promptrec.data import load_dataset
    from promptrec.simulation.loop import user_groups

    data = load_dataset("ml-100k", shared_dataset("ml-100k"))
    users = pd.Index(sorted(data.interactions["user_id"].unique()))
    groups = user_groups(data, users, np.ones(len(users)))
    gender, names = groups["gender"]
    assert names == ["M", "F"] and (gender == 1).sum() == 273  # 273 women among the 943 users
    assert set(np.unique(groups["age"][0])) == {0, 1}
