"""Leave-one-out split per user: last interaction = test, the one before = validation.

Users with fewer than three interactions keep everything in training and are not evaluated
(there is nothing left to learn from otherwise). Because :class:`InteractionData` already holds
each user's events in chronological order with a source-order tie-break, "last" is well defined
and never depends on item ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .base import InteractionData


@dataclass
class Split:
    data: InteractionData
    train: pd.DataFrame  # interaction rows used for fitting anything (models, indexers, tokenizers)
    valid: pd.DataFrame  # one row per evaluated user: the second-to-last interaction
    test: pd.DataFrame  # one row per evaluated user: the last interaction

    def train_sequences(self) -> dict[str, list[str]]:
        return group_sequences(self.train)

    def history(self, stage: str) -> dict[str, list[str]]:
        """The input history for evaluating ``stage``: train for "valid", train+valid for "test"."""
        seqs = self.train_sequences()
        if stage == "valid":
            return seqs
        if stage != "test":
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        for u, item in zip(self.valid["user_id"], self.valid["item_id"]):
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


def group_sequences(df: pd.DataFrame, column: str = "item_id") -> dict[str, list]:
    """user -> values of ``column`` in row order. Rows of a user are contiguous in a split table.

    Plain numpy on object arrays: pandas' groupby on string columns is several times slower.
    """
    users = df["user_id"].to_numpy(dtype=object)
    values = df[column].to_numpy(dtype=object)
    if len(users) == 0:
        return {}
    cuts = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.r_[0, cuts]
    out: dict[str, list] = {}
    for s, chunk in zip(starts, np.split(values, cuts)):
        out.setdefault(users[s], []).extend(chunk.tolist())
    return out


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


__all__ = ["Split", "leave_one_out"]
