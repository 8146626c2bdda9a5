"""Continual update: continue a saved model on the feedback stored since a time.

Works for any saved recommender through the protocol (``update``): models that warm-start
(the prompt LMs) are fine-tuned from their weights, the others are refitted on the new data.
The new training sequences are each user's saved history (training items plus the validation
item the saved model held out) followed by their positive events (click, purchase, a rating at
or above ``like_threshold``) in time order. For every user with such events, the newest one is
held out: it is the validation target that picks the best epoch, and its NDCG@10 before and
after the update is reported, so an update that made things worse shows. The catalogue is the
saved model's: items it does not know cannot be produced and their events are skipped (and
counted); learning new items needs a full retraining.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.recommender import Recommender, load_recommender
from ..data import InteractionData, Split
from ..evaluation.ranking import evaluate_rankings
from .engine import LIKE_THRESHOLD, POSITIVE
from .store import FeedbackStore

log = logging.getLogger("promptrec")


def update_split(
    rec: Recommender, events: pd.DataFrame, like_threshold: float = LIKE_THRESHOLD
) -> tuple[Split, dict[str, int]]:
    """The update split for ``rec`` from stored ``events`` (module doc) and what was skipped."""
    # The serving engine's rule (engine.is_negative), on the whole table at once.
    liked = events["type"].isin(POSITIVE) | ((events["type"] == "rating") & (events["value"] >= like_threshold))
    catalogue = rec.catalogue()
    known = events["item_id"].isin(set(catalogue))
    new = events[liked & known].sort_values(["timestamp", "seq"], kind="stable")
    rows = []
    for user in sorted(set(rec.users()) | set(new["user_id"])):
        for item in rec.history(user, "test"):
            rows.append((user, item, 0.0, "saved"))
    rows += [(u, i, float(t), "new") for u, i, t in zip(new["user_id"], new["item_id"], new["timestamp"])]
    table = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "part"])
    # Saved histories first (their order is the sequence order), then new events by time.
    table = table.sort_values("user_id", kind="stable").reset_index(drop=True)
    newest = table[table["part"] == "new"].groupby("user_id").tail(1).index
    valid = table.loc[newest, ["user_id", "item_id", "timestamp"]].reset_index(drop=True)
    train = table.drop(index=newest)[["user_id", "item_id", "timestamp"]].reset_index(drop=True)
    # Every catalogue item, with the metadata the model kept.
    items = rec.item_table().reindex(pd.Index(catalogue, name="item_id"))
    data = InteractionData(table[["user_id", "item_id", "timestamp"]], items.reset_index())
    split = Split(data=data, train=train, valid=valid, test=valid.iloc[0:0])
    counts = {
        "events": len(events),
        "positive_events_used": len(new),
        "skipped_unknown_items": int((liked & ~known).sum()),
        "skipped_not_positive": int((~liked).sum()),
        "users_updated": int(new["user_id"].nunique()),
    }
    return split, counts


# Fine-tuning from trained weights wants a gentle step and no validation sample, where the
# model's parameters have such keys (a prompt LM's run config); --set overrides them.
FINETUNE_DEFAULTS = {"train.lr": 1e-4, "train.warmup_ratio": 0.0, "train.val_users": 0}


def update_model(
    model_dir: str | Path,
    database: str,
    output: str | Path,
    since: float | None = None,
    epochs: int | None = 1,
    overrides: dict[str, Any] | None = None,
    like_threshold: float = LIKE_THRESHOLD,
    progress: bool = True,
) -> dict[str, Any]:
    """Update the model in ``model_dir`` on the events stored since ``since``; save to ``output``.

    ``epochs`` and ``overrides`` (the model's parameters, dotted keys for a run config) apply to
    this update. Returns a summary: event counts, validation NDCG@10 before and after, seconds.
    """
    start = time.perf_counter()
    rec = load_recommender(model_dir)
    rec.progress = progress
    with FeedbackStore(database) as store:
        events = store.events_since(since)
    if events.empty:
        raise ValueError(f"no feedback events{'' if since is None else f' since {since}'} in {database}")
    split, counts = update_split(rec, events, like_threshold)
    if split.valid.empty:
        raise ValueError(
            f"none of the {len(events)} events is a positive event on an item the model knows: nothing to learn"
        )
    users = list(split.valid["user_id"])
    # The "before" score must see the new events too: the model answers from the new histories.
    before, _ = evaluate_rankings(rec, split, stage="valid", k=20, users=users, histories=split.history("valid"))
    defaults = {key: value for key, value in FINETUNE_DEFAULTS.items() if _has_key(rec.get_params(), key)}
    rec.update(split, epochs=epochs, params={**defaults, **(overrides or {})})
    after, _ = evaluate_rankings(rec, split, stage="valid", k=20, users=users)
    rec.fit_info_["update"] = {**rec.fit_info_.get("update", {}), **counts, "since": since, "from": str(model_dir)}
    rec.save_pretrained(output)
    summary = {
        **counts,
        "warm_start": rec.fit_info_["update"]["warm_start"],
        "valid_users": len(users),
        "valid_NDCG@10_before": before["NDCG@10"],
        "valid_NDCG@10_after": after["NDCG@10"],
        "valid_HR@10_before": before["HR@10"],
        "valid_HR@10_after": after["HR@10"],
        "seconds": round(time.perf_counter() - start, 2),
        "output": str(output),
    }
    if "families" in rec.fit_info_["update"]:
        summary["families_fine_tuned"] = rec.fit_info_["update"]["families"]
    log.info("update: %s", summary)
    return summary


def _has_key(params: dict[str, Any], dotted: str) -> bool:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
