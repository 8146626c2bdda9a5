"""Trie-constrained decoding: only catalogue items, each once, history excluded, loud on empty."""

import pytest
import torch

from promptrec.backbones import build_t5
from promptrec.generation import ItemTrie, TrieConstraint, collect_beams

EOS = 1
# 6 items with 2-token codes over tokens 10..13; vocabulary of 20 leaves many non-item tokens.
CODES = [[10, 11], [10, 12], [11, 10], [11, 13], [12, 10], [13, 13]]


def generate(constraint, k, batch=2, seed=0):
    torch.manual_seed(seed)
    model = build_t5(20, "tiny", pad_token_id=0, eos_token_id=EOS).eval()
    inputs = torch.randint(3, 20, (batch, 5))
    out = model.generate(
        input_ids=inputs, num_beams=k, num_return_sequences=k, max_new_tokens=3, length_penalty=0.0,
        do_sample=False, logits_processor=[constraint], return_dict_in_generate=True, output_scores=True,
    )
    return out.sequences[:, 1:].tolist(), out.sequences_scores.tolist()


def items_per_example(trie, seqs, scores, k):
    return [[i for i, _ in row] for row in collect_beams(trie, seqs, scores, k)]


def test_trie_structure():
    trie = ItemTrie(CODES, EOS)
    assert len(trie) == 6 and trie.depth == 3
    assert trie.item_of([11, 13, EOS]) == 3
    assert trie.item_of([11, 11, EOS]) is None
    assert trie.walk([10]) is not None and trie.walk([14]) is None
    with pytest.raises(ValueError, match="share a code"):
        ItemTrie([[10, 11], [10, 11]], EOS)


def test_only_catalogue_items_no_duplicates():
    trie = ItemTrie(CODES, EOS)
    seqs, scores = generate(TrieConstraint(trie, num_beams=6), k=6)
    for items in items_per_example(trie, seqs, scores, 6):
        assert sorted(items) == list(range(6))  # all six valid items, each once


def test_history_excluded():
    trie = ItemTrie(CODES, EOS)
    excluded = [[0, 3], [5]]
    seqs, scores = generate(TrieConstraint(trie, num_beams=4, excluded=excluded), k=4)
    for items, ex in zip(items_per_example(trie, seqs, scores, 4), excluded):
        assert len(items) == 4 and len(set(items)) == 4
        assert not set(items) & set(ex)


def test_fewer_available_than_beams_drops_padding_beams():
    trie = ItemTrie(CODES, EOS)
    excluded = [[0, 1, 2, 3], [0, 1, 2, 3]]  # two items left, four beams asked
    seqs, scores = generate(TrieConstraint(trie, num_beams=4, excluded=excluded), k=4)
    for items in items_per_example(trie, seqs, scores, 4):
        assert sorted(items) == [4, 5]


def test_candidate_lists_restrict_output():
    trie = ItemTrie(CODES, EOS)
    allowed = [[1, 2, 5], [0, 4]]
    seqs, scores = generate(TrieConstraint(trie, num_beams=2, allowed=allowed, excluded=[[5], []]), k=2)
    per = items_per_example(trie, seqs, scores, 2)
    assert sorted(per[0]) == [1, 2] and sorted(per[1]) == [0, 4]


def test_empty_allowed_set_fails_loudly():
    trie = ItemTrie(CODES, EOS)
    with pytest.raises(ValueError, match="no catalogue item is available"):
        TrieConstraint(trie, num_beams=2, excluded=[list(range(6))])
    with pytest.raises(ValueError, match="no catalogue item is available"):
        TrieConstraint(trie, num_beams=2, allowed=[[3]], excluded=[[3]])


def test_fixed_length_codes_stop_without_eos():
    trie = ItemTrie(CODES, EOS)
    assert trie.code_length == 2 and trie.decode_steps == 2
    assert trie.item_of([11, 13]) == 3 and trie.item_of([11]) is None
    torch.manual_seed(0)
    model = build_t5(20, "tiny", pad_token_id=0, eos_token_id=EOS).eval()
    out = model.generate(
        input_ids=torch.randint(3, 20, (2, 5)), num_beams=4, num_return_sequences=4, max_new_tokens=2,
        length_penalty=0.0, do_sample=False, logits_processor=[TrieConstraint(trie, 4, excluded=[[0], [1]])],
        return_dict_in_generate=True, output_scores=True,
    )
    per = [[i for i, _ in row] for row in collect_beams(trie, out.sequences[:, 1:].tolist(), out.sequences_scores.tolist(), 4)]
    assert all(len(set(p)) == 4 for p in per) and 0 not in per[0] and 1 not in per[1]
    assert ItemTrie([[10], [11, 12]], EOS).code_length is None
