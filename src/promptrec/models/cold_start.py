"""Cold-start items: ranking quality for the users whose held-out item was never trained on.

With :func:`promptrec.data.split.cold_item_split` a share of the items never occurs in training,
yet may be a user's validation or test target. Every recommender still ranks **all** catalogue
items (no sampled candidates) through the shared harness; this module splits the per-user results
into *cold* users (target is a cold item) and *warm* users (target was trained on), and adds the
exact expectation of a uniformly random ranking of each user's unseen items for scale.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from ..core.recommender import RECOMMENDERS, Recommender, build_recommender, load_recommender
from ..data.split import Split
from ..evaluation.metrics import DEFAULT_RANKING_METRICS, RankingMetric, parse_metric
from ..evaluation.ranking import evaluate_rankings

GROUPS = ("all", "cold", "warm")


def target_groups(split: Split, stage: str = "test", users: Sequence[str] | None = None) -> pd.Series:
    """user_id -> ``"cold"`` or ``"warm"``: whether the user's ``stage`` target is a cold item."""
    targets = split.targets(stage)
    if users is not None:
        targets = targets[targets["user_id"].isin(set(map(str, users)))]
    cold = targets["item_id"].isin(split.cold_items).to_numpy()
    return pd.Series(np.where(cold, "cold", "warm"), index=pd.Index(targets["user_id"], name="user_id"), name="group")


def random_expected(
    split: Split,
    stage: str = "test",
    k: int = 20,
    metrics: Sequence[str] = DEFAULT_RANKING_METRICS,
    users: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per-user expected metrics of a uniformly random ranking of the user's unseen items.

    A user with history ``H`` (``split.history(stage)``) has ``m`` candidates: the catalogue
    items not in ``H``. A random order puts the target at each rank ``1..m`` with probability
    ``1/m`` and returns the first ``k``, so for a metric ``f`` of the target's rank (0 beyond the
    list) ``E[f] = (1/m) * sum_{r=1}^{min(k, m)} f(r)``; e.g. ``E[HR@10] = min(10, m) / m``. A
    target inside ``H`` cannot be returned: 0. Also gives ``cold_share``, the expected share of
    cold items at any position of the list (cold candidates / m). Exact, no sampling.
    """
    parsed = [parse_metric(m) for m in metrics]
    for m in parsed:
        if not isinstance(m, RankingMetric):
            raise ValueError(f"{m.name} is not a ranking metric")
    catalogue = split.data.items.index
    n_items = len(catalogue)
    cold_total = int(catalogue.isin(split.cold_items).sum())
    targets = split.targets(stage)
    if users is not None:
        targets = targets[targets["user_id"].isin(set(map(str, users)))]
    history = split.history(stage)
    ranks = np.arange(1, k + 1, dtype=float)  # (k,)
    # cum[name][j] = sum of f(r) for r = 1..j (j = 0..k)
    cum = {m.name: np.r_[0.0, np.cumsum(m.from_ranks(ranks))] for m in parsed}
    rows = []
    cold_items = split.cold_items
    for user, target in zip(targets["user_id"], targets["item_id"]):
        seen = {i for i in history.get(user, []) if i in catalogue}
        m = n_items - len(seen)
        row: dict[str, Any] = {"user_id": user, "candidates": m}
        hit_possible = target not in seen and m > 0
        for name, c in cum.items():
            row[name] = c[min(k, m)] / m if hit_possible else 0.0
        row["cold_share"] = (cold_total - len(seen & cold_items)) / m if m else 0.0
        rows.append(row)
    return pd.DataFrame(rows).set_index("user_id")


def cold_share(per_user: pd.DataFrame, cold_items: frozenset[str], k: int) -> np.ndarray:
    """Per user, the share of the first ``k`` recommended items that are cold items."""
    return np.array([sum(i in cold_items for i in recs[:k]) / k for recs in per_user["recommended"]])


def evaluate_cold_start(
    recommenders: Mapping[str, Any],
    split: Split,
    stage: str = "test",
    k: int = 20,
    metrics: Sequence[str] = DEFAULT_RANKING_METRICS,
    users: Sequence[str] | None = None,
    share_at: int = 10,
) -> dict[str, Any]:
    """All-item evaluation of each recommender on ``split``, reported for all, cold and warm users.

    Each recommender goes through :func:`promptrec.evaluation.ranking.evaluate_rankings` once (every
    catalogue item a candidate, history excluded and checked); the per-user values are then
    averaged over the users whose ``stage`` target is a cold item and over the rest. ``random``
    is :func:`random_expected` on the same users. Per group and model: every metric, plus
    ``cold_share@{share_at}`` (share of cold items among the first ``share_at`` recommended).

    Returns ``{"users": {group: count}, "candidates": n_items, "models": {name: {group: {...},
    "summary": harness summary}}}``; ``per_user`` tables are in ``result["per_user"][name]``.
    """
    groups = target_groups(split, stage, users)
    user_ids = list(groups.index)
    out: dict[str, Any] = {
        "stage": stage,
        "k": k,
        "candidates": len(split.data.items),
        "cold_items": len(split.cold_items),
        "users": {g: int(len(groups) if g == "all" else (groups == g).sum()) for g in GROUPS},
        "models": {},
        "per_user": {},
    }
    share_key = f"cold_share@{share_at}"
    for name, rec in recommenders.items():
        summary, per_user = evaluate_rankings(rec, split, stage=stage, k=k, users=user_ids, metrics=metrics)
        table = per_user.set_index("user_id")
        table[share_key] = cold_share(per_user, split.cold_items, share_at)
        out["models"][name] = {
            **_group_means(table, groups, [*metrics, share_key]),
            "summary": {key: summary[key] for key in ("invalid_rate", "history_violations", "eval_users",
                                                      "eval_seconds")},
        }
        out["per_user"][name] = table
    rand = random_expected(split, stage, k=k, metrics=metrics, users=user_ids)
    rand[share_key] = rand.pop("cold_share")
    out["models"]["random"] = _group_means(rand, groups, [*metrics, share_key])
    out["per_user"]["random"] = rand
    return out


@RECOMMENDERS.register("cold_prefix")
class ColdPrefixRecommender(Recommender):
    """Cold items by code prefix, as TIGER does for cold-start items (Rajput et al. 2023, 4.3).

    Wraps a generative recommender with semantic ids (``rec.indexer.codes``; every code ends in
    a collision token). The wrapped model ranks as usual; then, walking its list best first,
    every cold item whose code prefix (the code without its collision token) equals that of a
    listed item is inserted right after it with the same score, until ``round(share * k)`` cold
    items were added. The prefix carries the meaning of the item's text; the collision token of
    a cold item is a token the model never produced for it, so its own score is not used.

    rec: the fitted model to wrap; or ``base`` (``{"recommender": NAME, "params": {...}}``)
        names one that ``fit`` builds and fits.
    cold_items: the items never trained on (default: catalogue items absent from
        ``rec.train_history``). Among several cold items of one prefix, the order is that of
        their collision tokens (a seeded order fixed by the indexer).
    """

    name = "cold_prefix"

    def __init__(
        self,
        rec: Any = None,
        share: float = 0.1,
        cold_items: frozenset[str] | None = None,
        base: Mapping[str, Any] | None = None,
    ) -> None:
        if not 0 <= share <= 1:
            raise ValueError(f"share must be in [0, 1], got {share}")
        if rec is None and base is None:
            raise ValueError("cold_prefix wraps a model: pass a fitted rec, or base={'recommender': NAME, 'params': {...}}")
        self.share = share
        self.base = dict(base) if base is not None else {"recommender": rec.name, "params": rec.get_params()}
        self.fit_info_: dict[str, Any] = {}
        if rec is not None:
            self._wrap(rec, cold_items)

    def _wrap(self, rec: Any, cold_items: frozenset[str] | None) -> None:
        self.rec = rec
        codes = rec.indexer.codes
        if cold_items is None:
            trained = {i for seq in rec.train_history.values() for i in seq}
            cold_items = frozenset(codes) - trained
        self.cold_items = frozenset(cold_items)
        self.by_prefix: dict[tuple[str, ...], list[str]] = {}
        for item in sorted(self.cold_items & set(codes), key=lambda i: (codes[i][:-1], _collision(codes[i]))):
            self.by_prefix.setdefault(codes[item][:-1], []).append(item)

    def get_params(self) -> dict[str, Any]:
        return {"share": self.share, "base": self.base}

    def fit(self, split: Split) -> Self:
        rec = build_recommender(self.base["recommender"], self.base.get("params"))
        rec.progress = self.progress
        self._wrap(rec.fit(split), None)
        self.fit_info_ = dict(rec.fit_info_)
        return self

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude_seen: bool = True,
        stage: str = "test",
        histories: Mapping[str, Sequence[str]] | None = None,
        candidates: Mapping[str, Sequence[str]] | None = None,
    ) -> pd.DataFrame:
        base = self.rec.recommend(
            user_ids, k=k, exclude_seen=exclude_seen, stage=stage, histories=histories, candidates=candidates
        )
        budget = round(self.share * k)
        codes = self.rec.indexer.codes
        rows = []
        for user, group in base.groupby("user_id", sort=False):
            seen = set(self.current_history(user, stage, histories)) if exclude_seen else set()
            if candidates is not None and user in candidates:  # cold items outside the list stay out
                seen |= self.cold_items - set(candidates[user])
            listed = set(group["item_id"])
            added = 0
            out: list[tuple[str, float]] = []
            for item, score in zip(group["item_id"], group["score"]):
                out.append((item, score))
                for cold in self.by_prefix.get(codes[item][:-1], []) if item in codes else []:
                    if added == budget:
                        break
                    if cold not in seen and cold not in listed:
                        out.append((cold, score))
                        listed.add(cold)
                        added += 1
            rows += [(user, item, score, rank) for rank, (item, score) in enumerate(out[:k], start=1)]
        return pd.DataFrame(rows, columns=["user_id", "item_id", "score", "rank"])

    # -- the rest of the protocol is the wrapped model's ----------------------------------------
    def history(self, user: str, stage: str = "test") -> list[str]:
        return self.rec.history(user, stage)

    def stage_histories(self, stage: str) -> Mapping[str, Sequence[str]]:
        return self.rec.stage_histories(stage)

    def catalogue(self) -> list[str]:
        return self.rec.catalogue()

    def item_table(self) -> pd.DataFrame:
        return self.rec.item_table()

    def save_pretrained(self, directory: str | Path) -> None:
        path = self._write_config(directory)
        self.rec.save_pretrained(path / "base")
        (path / "cold_items.json").write_text(json.dumps(sorted(self.cold_items)))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Self:
        path = Path(directory)
        config = cls._read_config(path)
        cold = frozenset(json.loads((path / "cold_items.json").read_text()))
        obj = cls(load_recommender(path / "base"), share=config["params"]["share"], cold_items=cold)
        obj.fit_info_ = config.get("fit_info", {})
        return obj


def _collision(code: tuple[str, ...]) -> int:
    return int(code[-1].rsplit("_", 1)[1].rstrip(">"))


def _group_means(table: pd.DataFrame, groups: pd.Series, columns: Sequence[str]) -> dict[str, dict[str, float]]:
    table = table.reindex(groups.index)
    res = {}
    for g in GROUPS:
        rows = table if g == "all" else table[(groups == g).to_numpy()]
        res[g] = {c: float(rows[c].mean()) if len(rows) else float("nan") for c in columns}
    return res


__all__ = ["ColdPrefixRecommender", "cold_share", "evaluate_cold_start", "random_expected", "target_groups"]
