"""The canonical in-memory form of a recommendation dataset.

Every loader produces an :class:`InteractionData`; everything downstream (splits, indexers,
prompts, baselines, evaluation) reads only this form. Ids are *external* ids kept as strings
(ASINs, MovieLens ids, the user's own keys), so no integer numbering from a source file, which may
leak the order of the test split, is ever used as a feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..core.registry import Registry

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating")
ITEM_TEXT_COLUMNS = ("title", "categories", "brand", "price")


class DataFormatError(ValueError):
    """Malformed input. The message names the file, the line (1-based) when known, and the problem."""

    def __init__(self, path: Any, problem: str, line: int | None = None) -> None:
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line
        self.problem = problem


@dataclass
class InteractionData:
    """Interactions plus side tables.

    interactions: one row per event, columns
        ``user_id`` (str), ``item_id`` (str), ``timestamp`` (float; a real time or the position in
        the user's sequence), ``rating`` (float, NaN when the source has none).
        Rows are in chronological order per user; ties in ``timestamp`` keep the order of the
        source file (a deterministic tie-break that does not look at item ids).
    items: indexed by ``item_id`` (str): the catalogue. Columns are whatever the source has among
        ``title`` (str), ``categories`` (list[str]), ``brand`` (str), ``price`` (float), plus extras.
        Every interacted item is in it; items may exist that nobody interacted with.
    users: indexed by ``user_id`` (str), optional attributes (age, gender, ...), or None.
    tags: free text users attached to items, one row per tag: ``user_id``, ``item_id`` (str),
        ``tag`` (str), ``timestamp`` (float); None when the source has none. Not interactions:
        nothing trains on them; they are user-written text to compare explanations with.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None
    name: str = "custom"
    meta: dict[str, Any] = field(default_factory=dict)
    tags: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        self.interactions = normalise_interactions(self.interactions)
        self.items = normalise_items(self.items, self.interactions)

    @property
    def has_ratings(self) -> bool:
        return bool(self.interactions["rating"].notna().any())

    @property
    def n_users(self) -> int:
        return int(self.interactions["user_id"].nunique())

    @property
    def n_items(self) -> int:
        return len(self.items)

    def sequences(self) -> dict[str, list[str]]:
        """Chronological item sequence per user (ties already broken by source order)."""
        return group_sequences(self.interactions)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": len(self.interactions),
            "has_ratings": self.has_ratings,
            "item_columns": [c for c in self.items.columns],
        }


def normalise_interactions(df: pd.DataFrame) -> pd.DataFrame:
    missing = {"user_id", "item_id"} - set(df.columns)
    if missing:
        raise ValueError(f"interactions lack required column(s): {sorted(missing)}")
    out = pd.DataFrame(
        {
            "user_id": df["user_id"].astype(str).to_numpy(),
            "item_id": df["item_id"].astype(str).to_numpy(),
            "timestamp": (
                pd.to_numeric(df["timestamp"]).astype(float).to_numpy()
                if "timestamp" in df
                else np.zeros(len(df))
            ),
            "rating": (
                pd.to_numeric(df["rating"]).astype(float).to_numpy()
                if "rating" in df
                else np.full(len(df), np.nan)
            ),
        }
    )
    # Group by user in order of first appearance and sort by time; a stable sort keeps the source
    # order for equal timestamps, so ties never fall back on item ids.
    first_seen = pd.factorize(out["user_id"])[0]
    order = np.lexsort((np.arange(len(out)), out["timestamp"].to_numpy(), first_seen))
    return out.iloc[order].reset_index(drop=True)


def normalise_items(items: pd.DataFrame | None, interactions: pd.DataFrame) -> pd.DataFrame:
    if items is None or len(items) == 0:
        items = pd.DataFrame(index=pd.Index([], name="item_id"))
    items = items.copy()
    if items.index.name != "item_id":
        if "item_id" in items.columns:
            items = items.set_index("item_id")
        items.index.name = "item_id"
    items.index = items.index.astype(str)
    if items.index.has_duplicates:
        dup = items.index[items.index.duplicated()][0]
        raise ValueError(f"item table has duplicate item_id {dup!r}")
    unseen = pd.Index(interactions["item_id"].unique()).difference(items.index)
    if len(unseen):
        items = pd.concat([items, pd.DataFrame(index=pd.Index(unseen, name="item_id"))])
    if "title" in items.columns:
        items["title"] = items["title"].where(items["title"].notna(), None)
    return items


def group_sequences(df: pd.DataFrame, column: str = "item_id") -> dict[str, list]:
    """user -> values of ``column`` in row order. Rows of a user are contiguous in a split table.

    Plain numpy and list slices: pandas' groupby on string columns is several times slower. Equal
    strings come out as one Python object (:func:`shared_objects`), so the lists of a 10^7-row log
    hold 10^7 pointers to the catalogue's ids rather than 10^7 fresh strings (pandas' Arrow-backed
    strings make a new object per row on conversion: ~60 bytes each).
    """
    if len(df) == 0:
        return {}
    codes, names = pd.factorize(df["user_id"])  # (N,) user of each row, in order of appearance
    flat = shared_objects(df[column]).tolist()
    names = np.asarray(names, dtype=object).tolist()
    bounds = np.r_[0, np.flatnonzero(codes[1:] != codes[:-1]) + 1, len(codes)].tolist()
    out: dict[str, list] = {}
    for start, end in pairwise(bounds):
        user = names[codes[start]]
        if user in out:  # a user's rows are contiguous in a split table, but need not be elsewhere
            out[user].extend(flat[start:end])
        else:
            out[user] = flat[start:end]
    return out


def shared_objects(column: pd.Series) -> np.ndarray:
    """``column`` as an object array in which equal values are one object (numbers as they are)."""
    if column.dtype.kind in "biuf":
        return column.to_numpy(dtype=object)
    codes, uniques = pd.factorize(column, use_na_sentinel=False)
    return np.asarray(uniques, dtype=object)[codes]


# name -> loader(path, **options) -> InteractionData
LOADERS: Registry[Callable[..., InteractionData]] = Registry("data loader")


def load_dataset(loader: str, path: Any = None, **options: Any) -> InteractionData:
    """Load a dataset with a registered loader, e.g. ``load_dataset("p5", "data/beauty")``."""
    return LOADERS.get(loader)(path, **options)
