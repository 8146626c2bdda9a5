"""Evaluation of the P5 recommender beyond the shared all-item ranking harness.

The main numbers come from :func:`promptrec.evaluation.ranking.evaluate_rankings`, the same code every
recommender goes through. Added here (:meth:`P5Recommender.extra_metrics`): the invalid-output rate with the trie constraint switched
off, the sampled choose-from-candidates family (labelled "sampled" in every key), yes/no AUC and
rating RMSE/MAE when the model was trained on those families.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ...evaluation.metrics import auc, mae, ranking_metrics, rmse, summarise
from ...evaluation.ranking import evaluate_rankings

if TYPE_CHECKING:
    from ...data import Split
    from .model import P5Recommender


def evaluate_users(rec: "P5Recommender", split: "Split", users: Sequence[str], stage: str = "valid") -> dict[str, float]:
    """HR/NDCG on the given users: the cheap check used for early stopping."""
    summary, _ = evaluate_rankings(rec, split, stage=stage, k=max(rec.config.eval.ks), users=list(users))
    return summary


def p5_extra_metrics(rec: "P5Recommender", split: "Split", stage: str, users: list[str]) -> dict[str, Any]:
    """What a P5 model reports beside the shared ranking metrics on ``users`` (module doc)."""
    cfg = rec.config.eval
    result: dict[str, Any] = {}
    targets = split.targets(stage).set_index("user_id")["item_id"]
    histories = {u: rec.history(u, stage) for u in users}
    rng = np.random.default_rng(rec.config.train.seed + 1)

    if cfg.unconstrained_users:
        result.update(_unconstrained(rec, users[: cfg.unconstrained_users], histories))

    weights = rec.config.tasks.weights
    if weights.get("choose", 0) > 0:
        result.update(_sampled_choose(rec, users, targets, histories, cfg.sampled_candidates, rng))
    if weights.get("yesno", 0) > 0:
        negs = [rec.prompt_context.sample_negatives(rng, set(histories[u]) | {targets[u]}, 1)[0] for u in users]
        scores = rec.score(users + users, [targets[u] for u in users] + negs, stage=stage)
        result["yesno_AUC"] = float(auc(scores, np.r_[np.ones(len(users)), np.zeros(len(users))]))
    if weights.get("rating", 0) > 0 and split.data.has_ratings:
        rows = split.targets(stage)
        rows = rows[rows["user_id"].isin(set(users)) & rows["rating"].notna()]
        pred = rec.predict_rating(list(rows["user_id"]), list(rows["item_id"]))
        result["rating_RMSE"] = float(rmse(pred, rows["rating"].to_numpy()))
        result["rating_MAE"] = float(mae(pred, rows["rating"].to_numpy()))
    return result


def _unconstrained(rec: "P5Recommender", users: list[str], histories: dict[str, list[str]]) -> dict[str, float]:
    """Decode without the trie: how often the bare LM names a non-item or a history item."""
    invalid = in_history = total = 0
    t0 = time.time()
    for i in range(0, len(users), rec.config.eval.batch_size):
        batch = users[i : i + rec.config.eval.batch_size]
        prompts = rec.sequential_prompts(batch, [histories[u] for u in batch])
        for u, outs in zip(batch, rec.generate_items(prompts, 10, constrained=False)):
            hist = set(histories[u])
            for item, _ in outs:
                total += 1
                invalid += item is None
                in_history += item is not None and item in hist
    return {
        "unconstrained_invalid_rate": invalid / max(total, 1),
        "unconstrained_history_rate": in_history / max(total, 1),
        "unconstrained_users": len(users),
        "unconstrained_seconds": round(time.time() - t0, 2),
    }


def _sampled_choose(rec, users, targets, histories, n_candidates: int, rng) -> dict[str, float]:
    """Choose-from-candidates over ``n_candidates`` sampled items: a *sampled* metric, so labelled."""
    tmpl = rec.templates.family("choose")[0]
    ctx = rec.prompt_context
    rankings, gold = [], []
    bs = max(1, rec.config.eval.batch_size // 2)
    for i in range(0, len(users), bs):
        batch = users[i : i + bs]
        cand_lists = []
        prompts = []
        for u in batch:
            seen = set(histories[u]) | {targets[u]}
            n_neg = min(n_candidates - 1, len(ctx.catalogue) - len(seen))
            cands = ctx.sample_negatives(rng, seen, n_neg) + [targets[u]]
            rng.shuffle(cands)
            cand_lists.append(cands)
            prompts.append(
                tmpl.render_input(
                    {"user": rec.user_text(u), "history": ctx.history_text(histories[u]),
                     "candidates": " ".join(rec.indexer.text(c) for c in cands)}
                )
            )
        outs = rec.generate_items(prompts, 10, excluded=[histories[u] for u in batch], allowed=cand_lists)
        rankings += [[item for item, _ in o] for o in outs]
        gold += [targets[u] for u in batch]
    per_user = ranking_metrics(rankings, gold, ("HR@1", "HR@5", "HR@10", "NDCG@10"))
    return {f"sampled{n_candidates}_choose_{k}": v for k, v in summarise(per_user).items()}
