"""Synthetic interaction logs of any size: ``load_dataset("synthetic", users=10**6, items=10**5)``.

For measuring how a recommender's cost grows with the data, and for tests that need a dataset of
a given shape without files. The log imitates the two skews of real implicit feedback:

- **item popularity** follows a power law: the item of popularity rank ``r`` (1-based) is drawn
  with probability proportional to ``r ** -popularity`` (Zipf; ``popularity=1`` is close to
  Amazon and MovieLens catalogues, 0 is uniform). Ranks are given to a seeded permutation of the
  item ids, so an item's id says nothing about how popular it is;
- **history lengths** are heavy-tailed: ``min_length`` plus a log-normal draw (``sigma``
  ``length_sigma``) whose mean makes the average history ``mean_length`` long, rounded down and
  capped at ``max_length``. With the defaults (mean 15, sigma 1) the median user has about
  10 events and one in a thousand has more than 100, as in the Amazon review sets.

Every user has at least ``min_length`` events (3 by default, so every user is evaluated by
leave-one-out). Items of one history are drawn independently, so an item may recur in it (a
repeat purchase). Timestamps are each event's position in its user's history. Ids are
``"u<n>"`` and ``"i<n>"``; the catalogue holds all ``items`` items, whether drawn or not, and
has no text (models that need titles cannot read any here).

Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give the same log.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..base import LOADERS, InteractionData


@LOADERS.register("synthetic")
def load_synthetic(
    path: Any = None,
    users: int = 1000,
    items: int = 1000,
    mean_length: float = 15.0,
    min_length: int = 3,
    max_length: int = 1000,
    popularity: float = 1.0,
    length_sigma: float = 1.0,
    seed: int = 0,
    name: str = "synthetic",
) -> InteractionData:
    """A seeded synthetic log (module doc); ``path`` is unused (the loaders' common signature)."""
    if users < 1 or items < 1:
        raise ValueError(f"users and items must be positive, got {users} and {items}")
    if not 1 <= min_length <= mean_length <= max_length:
        raise ValueError(
            f"need 1 <= min_length <= mean_length <= max_length, got {min_length}, {mean_length}, {max_length}"
        )
    if popularity < 0 or length_sigma < 0:
        raise ValueError("popularity and length_sigma must be >= 0")
    rng = np.random.default_rng(seed)
    lengths = history_lengths(users, mean_length, min_length, max_length, length_sigma, rng)  # (U,)

    # Item of popularity rank r (0-based) is item_of_rank[r]; drawn by inverting the Zipf CDF.
    item_of_rank = rng.permutation(items)
    weights = np.arange(1, items + 1, dtype=np.float64) ** -popularity
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    draws = np.searchsorted(cdf, rng.random(int(lengths.sum())), side="right")  # (N,) ranks
    item_codes = item_of_rank[np.minimum(draws, items - 1)]

    # One string object per user and per item, shared by all their rows: a 10^7-row log then
    # holds 10^7 pointers, not 10^7 strings.
    user_ids = np.array([f"u{u}" for u in range(users)], dtype=object)
    item_ids = np.array([f"i{i}" for i in range(items)], dtype=object)
    row_user = np.repeat(np.arange(users), lengths)
    position = np.arange(len(row_user)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    interactions = pd.DataFrame(
        {
            "user_id": user_ids[row_user],
            "item_id": item_ids[item_codes],
            "timestamp": position.astype(float),
        }
    )
    params = {
        "users": users, "items": items, "mean_length": mean_length, "min_length": min_length,
        "max_length": max_length, "popularity": popularity, "length_sigma": length_sigma, "seed": seed,
    }  # fmt: skip
    return InteractionData(
        interactions=interactions,
        items=pd.DataFrame(index=pd.Index(item_ids, name="item_id")),
        name=name,
        meta={"loader": "synthetic", **params},
    )


def history_lengths(
    users: int,
    mean_length: float,
    min_length: int,
    max_length: int,
    sigma: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``min_length`` + a log-normal draw with mean ``mean_length - min_length``, floored, capped.

    The log-normal's ``mu`` is set so that its mean is ``mean_length - min_length + 0.5`` (the
    floor takes half an event off on average); the cap lowers the mean a little for large sigma.
    """
    extra = mean_length - min_length + 0.5
    mu = np.log(extra) - sigma**2 / 2
    lengths = min_length + np.floor(rng.lognormal(mu, sigma, size=users)).astype(np.int64)
    return np.minimum(lengths, max_length)


__all__ = ["history_lengths", "load_synthetic"]
