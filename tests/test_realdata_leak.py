"""On the real Beauty data, through the real build path: the item index is fitted without any
validation or test interaction, and its codes do not depend on which items were held out."""

import pytest
from conftest import shared_dataset

from promptrec.data import leave_one_out, load_dataset
from promptrec.indexing import ItemIndexer, build_indexer
from promptrec.models.p5.config import RunConfig
from promptrec.models.p5.model import P5Recommender

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def beauty_split():
    return leave_one_out(load_dataset("p5", shared_dataset("beauty")))


@pytest.mark.parametrize("method", ["random", "sequential", "collaborative"])
def test_indexer_sees_only_training_interactions(beauty_split, monkeypatch, method):
    seen = {}
    original = ItemIndexer.fit

    def spy(self, train_sequences, catalogue, items=None):
        seen["sequences"] = {u: list(s) for u, s in train_sequences.items()}
        return original(self, train_sequences, catalogue, items)

    monkeypatch.setattr(ItemIndexer, "fit", spy)
    cfg = RunConfig().update({"model.preset": "tiny", "index.method": method})
    P5Recommender(cfg).build(beauty_split)
    train = beauty_split.train_sequences()
    assert seen["sequences"] == train
    full = beauty_split.data.sequences()
    for u in list(beauty_split.test["user_id"]):
        assert len(seen["sequences"][u]) == len(full[u]) - 2  # validation and test items withheld


def test_sequential_codes_do_not_depend_on_held_out_items(beauty_split):
    train = beauty_split.train_sequences()
    catalogue = list(beauty_split.data.items.index)
    idx = build_indexer("sequential", seed=0).fit(train, catalogue)
    # Numbering the full sequences (the P5 way) would give different codes: the leak is detectable.
    leaky = build_indexer("sequential", seed=0).fit(beauty_split.data.sequences(), catalogue)
    train_items = beauty_split.train_items()
    assert any(idx.codes[i] != leaky.codes[i] for i in train_items)
    # The fitted index never sees the file's integer ids: external ids are 10-character ASINs.
    assert all(len(i) == 10 for i in catalogue) and "1" not in set(catalogue)


def test_independent_ids_carry_nothing_about_any_interaction(beauty_split):
    """One token per item (sequence_lm --set model.preset=mini --set model.max_history=20 --set model.templates=p5 --set model.prompt_eos=true --set model.item_init=random --set train.item_anchor=0 --set train.length_window=64 --set train.lr=0.003 --set train.epochs=45 --set train.patience=5): the assignment is a seeded permutation of
    the catalogue, identical whether the interactions it is given hold the held-out items or not."""
    catalogue = list(beauty_split.data.items.index)
    idx = build_indexer("random", seed=0, levels=1).fit(beauty_split.train_sequences(), catalogue)
    full = build_indexer("random", seed=0, levels=1).fit(beauty_split.data.sequences(), catalogue)
    assert idx.codes == full.codes
    assert len(set(idx.codes.values())) == len(catalogue) and {len(c) for c in idx.codes.values()} == {1}
