"""The item table a saved model keeps (titles and attributes, indexed by external item id), as
Parquet: for display, prompts and grounding, never for scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# The item columns a saved model keeps for display, prompts and grounding.
DISPLAY_COLUMNS = ("title", "categories", "brand")


def save_item_table(items: pd.DataFrame, path: str | Path) -> None:
    """Write an item table (indexed by item id) as Parquet, categories as lists of strings."""
    items = items.copy()
    if "categories" in items:
        items["categories"] = items["categories"].map(
            lambda c: [str(v) for v in c] if isinstance(c, (list, tuple, np.ndarray)) else ([] if c is None or c != c else [str(c)])
        )
    items.rename_axis("item_id").reset_index().to_parquet(path, index=False)


def load_item_table(path: str | Path) -> pd.DataFrame:
    """Read what :func:`save_item_table` wrote, indexed by item id, categories as lists."""
    items = pd.read_parquet(path).set_index("item_id")
    if "categories" in items:
        items["categories"] = [list(c) if c is not None else [] for c in items["categories"]]
    return items
