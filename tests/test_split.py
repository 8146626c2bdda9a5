"""Leave-one-out: the last two events of each user, in source order when timestamps tie."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from promptrec.data import InteractionData, leave_one_out, load_dataset


def make_data(rows: list[tuple[str, str, float]]) -> InteractionData:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return InteractionData(interactions=frame, items=None)


def events(frame: pd.DataFrame, user: str) -> list[tuple[str, float]]:
    rows = frame[frame["user_id"] == user]
    return list(zip(rows["item_id"], rows["timestamp"]))


def test_valid_and_test_are_the_last_two_events() -> None:
    # Given out of order on purpose: the split must follow time, not file position.
    data = make_data([("u", "d", 4), ("u", "a", 1), ("u", "c", 3), ("u", "b", 2), ("u", "e", 5)])
    split = leave_one_out(data)
    assert events(split.train, "u") == [("a", 1), ("b", 2), ("c", 3)]
    assert events(split.valid, "u") == [("d", 4)]
    assert events(split.test, "u") == [("e", 5)]
    assert split.history("valid") == {"u": ["a", "b", "c"]}
    assert split.history("test") == {"u": ["a", "b", "c", "d"]}


def test_test_event_is_never_in_training() -> None:
    # The test item also occurs earlier: only that earlier event may be in training.
    data = make_data(
        [("u", "x", 1), ("u", "y", 2), ("u", "z", 3), ("u", "x", 4), ("v", "p", 1), ("v", "q", 2), ("v", "r", 3)]
    )
    split = leave_one_out(data)
    for user in ("u", "v"):
        held_out = set(events(split.valid, user)) | set(events(split.test, user))
        assert not held_out & set(events(split.train, user))
        assert len(events(split.train, user)) + len(held_out) == len(events(data.interactions, user))
    assert events(split.train, "u") == [("x", 1), ("y", 2)]


def test_timestamp_ties_keep_source_order_not_item_order() -> None:
    # Same time for all three; file order z, a, m differs from item-id order a, m, z.
    data = make_data([("u", "z", 7), ("u", "a", 7), ("u", "m", 7)])
    split = leave_one_out(data)
    assert split.train["item_id"].tolist() == ["z"]
    assert split.valid["item_id"].tolist() == ["a"]
    assert split.test["item_id"].tolist() == ["m"]


def test_short_users_are_train_only() -> None:
    data = make_data(
        [("one", "a", 1)]
        + [("two", "a", 1), ("two", "b", 2)]
        + [("three", "a", 1), ("three", "b", 2), ("three", "c", 3)]
    )
    split = leave_one_out(data)
    assert set(split.valid["user_id"]) == set(split.test["user_id"]) == {"three"}
    assert events(split.train, "one") == [("a", 1)]
    assert events(split.train, "two") == [("a", 1), ("b", 2)]
    assert events(split.train, "three") == [("a", 1)]


@pytest.mark.realdata
def test_real_beauty_split() -> None:
    configured = os.environ.get("PROMPTREC_SHARED_DATA")
    root = Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (root / "beauty").is_dir():
        pytest.skip(f"benchmark data {root / 'beauty'} not found (set PROMPTREC_SHARED_DATA to its folder)")
    split = leave_one_out(load_dataset("p5", root / "beauty"))
    # 5-core data: every user has at least five events, so every user is evaluated.
    assert len(split.test) == len(split.valid) == 22_363
    assert len(split.train) == 198_502 - 2 * 22_363
