"""Continual update: fine-tune a saved model on the feedback stored since a time, warm-started.

The new training sequences are each user's saved history (training items plus the validation
item the saved model held out) followed by their positive events (click, purchase, a rating at or
above ``like_threshold``) in time order. For every user with such events, the newest one is held
out: it is the validation target that picks the best epoch, and its NDCG@10 before and after the
update is reported, so an update that made things worse shows. The index, tokenizer and LM shape
are the saved model's: items it does not know cannot be produced and their events are skipped
(and counted); learning new items needs a full retraining.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ..data import InteractionData, Split
from ..model import P5Recommender
from .engine import LIKE_THRESHOLD, POSITIVE
from .store import FeedbackStore

log = logging.getLogger("promptrec")


def update_split(
    rec: P5Recommender, events: pd.DataFrame, like_threshold: float = LIKE_THRESHOLD
) -> tuple[Split, dict[str, int]]:
    """The fine-tuning split for ``rec`` from stored ``events`` (module doc) and what was skipped."""
    # The serving engine's rule (engine.is_negative), on the whole table at once.
    liked = events["type"].isin(POSITIVE) | ((events["type"] == "rating") & (events["value"] >= like_threshold))
    known = events["item_id"].isin(rec.item_pos)
    new = events[liked & known].sort_values(["timestamp", "seq"], kind="stable")
    rows = []
    for user in sorted(set(rec.train_history) | set(rec.valid_item) | set(new["user_id"])):
        for item in rec.history(user, "test"):
            rows.append((user, item, 0.0, "saved"))
    rows += [(u, i, float(t), "new") for u, i, t in zip(new["user_id"], new["item_id"], new["timestamp"])]
    table = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "part"])
    # Saved histories first (their order is the sequence order), then new events by time.
    table = table.sort_values("user_id", kind="stable").reset_index(drop=True)
    newest = table[table["part"] == "new"].groupby("user_id").tail(1).index
    valid = table.loc[newest, ["user_id", "item_id", "timestamp"]].reset_index(drop=True)
    train = table.drop(index=newest)[["user_id", "item_id", "timestamp"]].reset_index(drop=True)
    data = InteractionData(table[["user_id", "item_id", "timestamp"]], rec.items.reset_index())
    split = Split(data=data, train=train, valid=valid, test=valid.iloc[0:0])
    counts = {
        "events": len(events),
        "positive_events_used": len(new),
        "skipped_unknown_items": int((liked & ~known).sum()),
        "skipped_not_positive": int((~liked).sum()),
        "users_updated": int(new["user_id"].nunique()),
    }
    return split, counts


def update_model(
    model_dir: str | Path,
    database: str,
    output: str | Path,
    since: float | None = None,
    overrides: dict[str, Any] | None = None,
    like_threshold: float = LIKE_THRESHOLD,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune ``model_dir`` on the events stored since ``since`` and save it to ``output``.

    ``overrides`` are config keys for the fine-tuning (default: 1 epoch, lr 1e-4, no warm-up).
    Returns a summary: event counts, validation NDCG@10 before and after, seconds.
    """
    from ..training import train

    start = time.perf_counter()
    rec = P5Recommender.from_pretrained(model_dir)
    with FeedbackStore(database) as store:
        events = store.events_since(since)
    if events.empty:
        raise ValueError(f"no feedback events{'' if since is None else f' since {since}'} in {database}")
    split, counts = update_split(rec, events, like_threshold)
    if split.valid.empty:
        raise ValueError(
            f"none of the {len(events)} events is a positive event on an item the model knows: nothing to learn"
        )
    # The saved directory keeps histories, not the training ratings: the rating family is not
    # fine-tuned (its weights still change with the shared layers; retrain to refresh it).
    weights = {name: w for name, w in rec.config.tasks.weights.items() if name != "rating"}
    defaults = {
        "train.epochs": 1, "train.lr": 1e-4, "train.warmup_ratio": 0.0, "train.val_users": 0, "tasks.weights": weights,
    }
    original = rec.config
    rec.config = rec.config.update({**defaults, **(overrides or {})})
    # The model answers from its own histories: the "before" score must see the new events too.
    rec.train_history = split.train_sequences()
    rec.valid_item = dict(zip(split.valid["user_id"], split.valid["item_id"]))
    users = list(split.valid["user_id"])
    before = rec.evaluate_users(split, users, stage="valid")
    train(rec, split, output_dir=None, progress=progress, warm_start=True)
    after = rec.evaluate_users(split, users, stage="valid")
    trained = sorted(n for n, w in rec.config.tasks.weights.items() if w > 0)
    rec.fit_info = {**rec.fit_info, "update": {**counts, "since": since, "from": str(model_dir), "families": trained}}
    # The saved config stays the original (its task weights say what the model can answer); the
    # update's settings are in fit_info.
    rec.fit_info["update"]["config"] = rec.config.to_dict()
    rec.config = original
    rec.save_pretrained(output)
    summary = {
        **counts,
        "valid_users": len(users),
        "valid_NDCG@10_before": before["NDCG@10"],
        "valid_NDCG@10_after": after["NDCG@10"],
        "valid_HR@10_before": before["HR@10"],
        "valid_HR@10_after": after["HR@10"],
        "families_fine_tuned": trained,
        "seconds": round(time.perf_counter() - start, 2),
        "output": str(output),
    }
    log.info("update: %s", summary)
    return summary
