import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from promptrec.data import InteractionData, leave_one_out

SHARED_DATA = Path(os.environ.get("PROMPTREC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"benchmark data {path} not present (set PROMPTREC_SHARED_DATA to its folder)")
    return path


def cyclic_data(n_users: int = 40, n_items: int = 30, length: int = 8, seed: int = 0) -> InteractionData:
    """Users walk a cycle of items (i, i+1, i+2, ...): the next item is fully predictable."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        rows += [(f"user{u}", f"item{(start + t) % n_items}", t) for t in range(length)]
    items = pd.DataFrame(
        {"item_id": [f"item{i}" for i in range(n_items)], "title": [f"thing number {i}" for i in range(n_items)]}
    )
    return InteractionData(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]), items)


@pytest.fixture
def cyclic_split():
    return leave_one_out(cyclic_data())
