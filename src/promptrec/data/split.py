"""Leave-one-out split per user: last interaction = test, the one before = validation.

Users with fewer than three interactions keep everything in training and are not evaluated
(there is nothing left to learn from otherwise). Because :class:`InteractionData` already holds
each user's events in chronological order with a source-order tie-break, "last" is well defined
and never depends on item ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .base import InteractionData, group_sequences


@dataclass
class Split:
    data: InteractionData
    train: pd.DataFrame  # interaction rows used for fitting anything (models, indexers, tokenizers)
    valid: pd.DataFrame  # one row per evaluated user: the second-to-last interaction
    test: pd.DataFrame  # one row per evaluated user: the last interaction
    cold_items: frozenset[str] = frozenset()  # items kept out of training entirely (cold_item_split)

    def train_sequences(self) -> dict[str, list[str]]:
        return group_sequences(self.train)

    def history(self, stage: str, users: Sequence[str] | None = None) -> dict[str, list[str]]:
        """The input history for evaluating ``stage``: train for "valid", train+valid for "test".

        ``users`` limits it to those users (the ones without history are left out): one hashed
        pass over the rows instead of a list per user of the whole log, which is what an
        evaluation of a few thousand users out of millions needs.
        """
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        train, valid = self.train, self.valid
        if users is not None:
            wanted = pd.Index(users)
            train = train[train["user_id"].isin(wanted)]
            valid = valid[valid["user_id"].isin(wanted)]
        seqs = group_sequences(train)
        if stage == "valid":
            return seqs
        for u, item in zip(valid["user_id"], valid["item_id"]):
            seqs[u] = seqs.get(u, []) + [item]
        return seqs

    def targets(self, stage: str) -> pd.DataFrame:
        if stage == "valid":
            return self.valid
        if stage == "test":
            return self.test
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")

    def train_items(self) -> set[str]:
        return set(self.train["item_id"].unique())


def leave_one_out(data: InteractionData) -> Split:
    df = data.interactions
    # Position counted from the end of each user's chronological sequence: 0 = last.
    from_end = df.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    sizes = df.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    evaluated = sizes >= 3
    test_mask = evaluated & (from_end == 0)
    valid_mask = evaluated & (from_end == 1)
    train_mask = ~(test_mask | valid_mask)
    return Split(
        data=data,
        train=df[train_mask].reset_index(drop=True),
        valid=df[valid_mask].reset_index(drop=True),
        test=df[test_mask].reset_index(drop=True),
    )


def cold_item_split(data: InteractionData, fraction: float = 0.1, seed: int = 0) -> Split:
    """Leave-one-out with a share of the items kept out of training entirely (cold items).

    Cold items: ``round(fraction * n)`` of the ``n`` items that occur in the interactions (at
    least one, at most ``n - 1``), the first ones of a permutation of the sorted item ids drawn
    with ``seed`` (never the source order). Catalogue items without any interaction are not
    drawn; nothing can be trained on them anyway.

    Events, per user in chronological order (as in :func:`leave_one_out`):

    - a user with three or more events: the last is the test target and the one before it the
      validation target, **whether or not their items are cold**; every earlier event goes to
      training unless its item is cold, in which case it is dropped (it is in no table);
    - a user whose earlier events are all cold items (nothing left to train on) is not evaluated:
      their two target events are dropped too;
    - a user with fewer than three events is not evaluated: their events of warm items go to
      training, those of cold items are dropped.

    So no cold item occurs in ``train``, which is all that the item index, the tokenizer, the
    model and the baselines are fitted on, and the validation-stage history (``train``) holds no
    cold item either. Cold items do occur as validation and test targets, and a cold validation
    item is part of the test-stage history (train + validation item), as every validation item
    is: a model reads it in the prompt at prediction time, without having trained on it.
    ``Split.cold_items`` holds the cold items.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    df = data.interactions
    items = np.array(sorted(df["item_id"].unique()), dtype=object)
    if len(items) < 2:
        raise ValueError("a cold-item split needs at least two interacted items")
    n_cold = min(max(1, round(fraction * len(items))), len(items) - 1)
    cold = frozenset(items[np.random.default_rng(seed).permutation(len(items))[:n_cold]].tolist())

    from_end = df.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    sizes = df.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    is_cold = df["item_id"].isin(cold).to_numpy()
    target = (sizes >= 3) & (from_end <= 1)
    train_mask = ~target & ~is_cold
    # Users with targets but no warm training event left are not evaluated.
    has_train = df.loc[train_mask, "user_id"].unique()
    target &= df["user_id"].isin(has_train).to_numpy()
    return Split(
        data=data,
        train=df[train_mask].reset_index(drop=True),
        valid=df[target & (from_end == 1)].reset_index(drop=True),
        test=df[target & (from_end == 0)].reset_index(drop=True),
        cold_items=cold,
    )


__all__ = ["Split", "cold_item_split", "leave_one_out"]
