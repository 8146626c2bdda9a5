"""Item indexers: code shape, determinism, persistence, and fitting on training data only."""

from __future__ import annotations

import numpy as np
import pytest

from promptrec.indexing import ItemIndexer, build_indexer
from promptrec.indexing.base import LEVEL_NAMES

CONFIGS = [
    ("random", {}),
    ("random", {"levels": 1}),
    ("random", {"levels": 3, "base": 5}),
    ("sequential", {}),
    ("sequential", {"levels": 1}),
    ("collaborative", {"clusters": 4}),
    ("collaborative", {"clusters": 3, "depth": 3, "window": None}),
    ("collaborative", {"clusters": 100}),  # every group is smaller than `clusters`
]
IDS = [f"{name}-{params}" for name, params in CONFIGS]


def make_dataset(seed: int = 0) -> tuple[dict[str, list[str]], dict[str, list[str]], list[str]]:
    """(full sequences, training sequences = all but the last two items, catalogue).

    The catalogue also holds three items nobody interacted with, and some items only ever occur
    in held-out positions; one user has a single training item and one has none.
    """
    rng = np.random.default_rng(seed)
    items = [f"item{j}" for j in range(60)]
    full = {
        f"user{u}": list(rng.choice(items, size=rng.integers(5, 11), replace=False)) for u in range(40)
    }
    full["short"] = ["item1", "item2", "item3"]
    full["tiny"] = ["item4", "item5"]
    train = {u: s[:-2] for u, s in full.items()}
    catalogue = items + ["cold_a", "cold_b", "cold_c"]
    return full, train, catalogue


def expected_length(name: str, params: dict) -> int:
    if name == "collaborative":
        return params.get("depth", 2) + 1
    return params.get("levels", 2)


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
def test_codes_cover_catalogue_unique_fixed_length_prefix_free(name: str, params: dict) -> None:
    _, train, catalogue = make_dataset()
    ix = build_indexer(name, seed=0, **params).fit(train, catalogue)
    assert set(ix.codes) == set(catalogue)
    codes = list(ix.codes.values())
    assert {len(c) for c in codes} == {expected_length(name, params)}
    assert len(set(codes)) == len(codes)
    prefixes = {c[:i] for c in codes for i in range(1, len(c))}
    assert not prefixes.intersection(codes)
    for code in codes:
        for level, token in enumerate(code):
            assert token.startswith(f"<{LEVEL_NAMES[level]}_") and token.endswith(">")
    assert ix.text(catalogue[0]) == "".join(ix.encode(catalogue[0]))


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
def test_same_seed_same_codes_whatever_the_catalogue_order(name: str, params: dict) -> None:
    _, train, catalogue = make_dataset()
    first = build_indexer(name, seed=3, **params).fit(train, catalogue).codes
    shuffled = list(np.random.default_rng(9).permutation(catalogue))
    again = build_indexer(name, seed=3, **params).fit(train, shuffled).codes
    assert first == again


@pytest.mark.parametrize(("name", "params"), [c for c in CONFIGS if c[0] != "sequential"])
def test_different_seed_different_codes(name: str, params: dict) -> None:
    _, train, catalogue = make_dataset()
    a = build_indexer(name, seed=0, **params).fit(train, catalogue).codes
    b = build_indexer(name, seed=1, **params).fit(train, catalogue).codes
    assert a != b


def test_sequential_seed_only_moves_items_unseen_in_training() -> None:
    _, train, catalogue = make_dataset()
    a = build_indexer("sequential", seed=0).fit(train, catalogue).codes
    b = build_indexer("sequential", seed=1).fit(train, catalogue).codes
    seen = {i for s in train.values() for i in s}
    assert all(a[i] == b[i] for i in seen)
    assert a != b


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
def test_save_load_round_trip(name: str, params: dict, tmp_path) -> None:
    _, train, catalogue = make_dataset()
    ix = build_indexer(name, seed=5, **params).fit(train, catalogue)
    ix.save(tmp_path)
    loaded = ItemIndexer.load(tmp_path)
    assert type(loaded) is type(ix)
    assert (loaded.seed, loaded.params, loaded.codes) == (5, params, ix.codes)
    assert loaded.tokens() == ix.tokens()


def test_sequential_codes_depend_only_on_training_sequences() -> None:
    """Two datasets with the same training prefixes but different held-out items.

    Numbering the full sequences (what produced the Beauty file's ids) gives different codes to
    training items in the two datasets, i.e. the codes would encode held-out items. Numbering the
    training sequences gives identical codes.
    """
    full_a, train, catalogue = make_dataset()
    rng = np.random.default_rng(1)
    full_b = {u: s[:-2] + list(rng.choice(catalogue, size=2, replace=False)) for u, s in full_a.items()}
    assert full_a != full_b
    train_b = {u: s[:-2] for u, s in full_b.items()}
    assert train_b == train

    codes_a = build_indexer("sequential", seed=0).fit(train, catalogue).codes
    codes_b = build_indexer("sequential", seed=0).fit(train_b, catalogue).codes
    assert codes_a == codes_b

    leaky_a = build_indexer("sequential", seed=0).fit(full_a, catalogue).codes
    leaky_b = build_indexer("sequential", seed=0).fit(full_b, catalogue).codes
    seen = {i for s in train.values() for i in s}
    assert any(leaky_a[i] != leaky_b[i] for i in seen)


def test_sequential_numbers_follow_first_appearance_in_training() -> None:
    train = {"u1": ["a", "b"], "u2": ["c", "a", "d"]}
    ix = build_indexer("sequential", seed=0, levels=1).fit(train, ["d", "c", "b", "a", "z"])
    assert [ix.codes[i] for i in "abcdz"] == [(f"<a_{n}>",) for n in range(5)]


@pytest.mark.parametrize("seed", range(4))
def test_collaborative_recovers_two_communities(seed: int) -> None:
    """Users buy within one of two item groups; one user bridges them, so the graph is connected."""
    rng = np.random.default_rng(seed + 100)
    group_a = [f"a{j}" for j in range(12)]
    group_b = [f"b{j}" for j in range(12)]
    train = {f"u{u}": list(rng.choice([group_a, group_b][u % 2], size=6, replace=False)) for u in range(40)}
    train["bridge"] = ["a0", "b0"]
    ix = build_indexer("collaborative", seed=seed, clusters=2, window=None)
    ix.fit(train, group_a + group_b)
    top_a = {ix.codes[i][0] for i in group_a}
    top_b = {ix.codes[i][0] for i in group_b}
    assert len(top_a) == 1 and len(top_b) == 1 and top_a != top_b


def test_collaborative_window_limits_cooccurrence() -> None:
    from promptrec.indexing.collaborative import cooccurrence

    index = {i: n for n, i in enumerate("abcd")}
    near = cooccurrence({"u": list("abcd")}, index, window=1).toarray()
    assert near[0, 1] == 1 and near[0, 2] == 0 and np.array_equal(near, near.T)
    everything = cooccurrence({"u": list("abcd")}, index, window=None).toarray()
    assert everything[0, 3] == 1 and everything.trace() == 0


@pytest.mark.parametrize("name", ["random", "sequential", "collaborative"])
def test_unknown_param_raises(name: str) -> None:
    with pytest.raises(ValueError, match="unknown parameter"):
        build_indexer(name, seed=0, level=3)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("random", {"levels": 0}),
        ("random", {"levels": 27}),
        ("random", {"levels": "2"}),
        ("random", {"base": 1}),
        ("sequential", {"levels": True}),
        ("collaborative", {"clusters": 1}),
        ("collaborative", {"depth": 0}),
        ("collaborative", {"window": 0}),
        ("collaborative", {"clusters": 2.5}),
    ],
)
def test_bad_param_values_raise(name: str, params: dict) -> None:
    with pytest.raises(ValueError):
        build_indexer(name, seed=0, **params)


@pytest.mark.parametrize("name", ["random", "sequential"])
def test_base_too_small_for_catalogue_raises(name: str) -> None:
    _, train, catalogue = make_dataset()
    with pytest.raises(ValueError, match="codes for"):
        build_indexer(name, seed=0, levels=2, base=3).fit(train, catalogue)


@pytest.mark.parametrize("name", ["sequential", "collaborative"])
def test_training_item_outside_catalogue_raises(name: str) -> None:
    with pytest.raises(ValueError, match="not in the catalogue"):
        build_indexer(name, seed=0).fit({"u": ["a", "ghost"]}, ["a", "b"])
