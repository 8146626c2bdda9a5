"""Trie-constrained decoding: only catalogue items, each once, history excluded, loud on empty."""

import pytest
import torch

from promptrec.backbones.builders import build_t5
from promptrec.models.p5.generation import (
    ItemTrie,
    TrieConstraint,
    collect_beams,
    fixed_length_beam_search,
    supports_fixed_length_search,
)

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


def hf_search(model, inputs, mask, trie, beams, excluded=None, allowed=None):
    """The reference: transformers' beam search with the trie as a logits processor."""
    out = model.generate(
        input_ids=inputs, attention_mask=mask, num_beams=beams, num_return_sequences=beams,
        max_new_tokens=trie.decode_steps, length_penalty=0.0, do_sample=False,
        logits_processor=[TrieConstraint(trie, beams, excluded=excluded, allowed=allowed)],
        return_dict_in_generate=True, output_scores=True,
    )
    return collect_beams(trie, out.sequences[:, 1:].tolist(), out.sequences_scores.tolist(), beams)


# 3-token codes over tokens 10..15, sharing prefixes so that the trie branches at every level.
CODES3 = [[10 + a, 12 + b, 13 + c] for a in range(3) for b in range(2) for c in range(3)][:16]


@pytest.mark.parametrize("beams", [2, 5, 16])
@pytest.mark.parametrize("case", ["plain", "excluded", "allowed"])
def test_fixed_length_search_equals_transformers_beam_search(beams, case) -> None:
    """Same items, same order, same scores as generate(), with padded prompts of several lengths
    (the padding mask must reach the cross-attention of the shared encoder states)."""
    trie = ItemTrie(CODES3, EOS)
    torch.manual_seed(0)
    model = build_t5(20, "tiny", pad_token_id=0, eos_token_id=EOS).eval()
    inputs = torch.randint(3, 20, (4, 9))
    mask = torch.ones_like(inputs)
    for row, length in enumerate([9, 4, 6, 2]):  # right padding, as the tokenizer pads
        inputs[row, length:] = 0
        mask[row, length:] = 0
    excluded = [[0, 5], [], [15, 3, 7], [1]] if case != "plain" else None
    allowed = [[0, 2, 5, 9], [4, 6], [1, 3, 7, 8, 15], [1, 11]] if case == "allowed" else None
    enc = {"input_ids": inputs, "attention_mask": mask}
    fast = fixed_length_beam_search(model, enc, trie, beams, excluded, allowed)
    reference = hf_search(model, inputs, mask, trie, beams, excluded, allowed)
    for got, want in zip(fast, reference):
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)
    for b, row in enumerate(fast):
        got = [i for i, _ in row]
        available = set(allowed[b] if allowed else range(len(CODES3))) - set(excluded[b] if excluded else ())
        # Distinct available items, as many as the beams or, when fewer are left, all of them.
        assert len(got) == len(set(got)) == min(beams, len(available)) and set(got) <= available


def test_fixed_length_search_fails_loudly_and_leaves_the_model_as_it_was() -> None:
    trie = ItemTrie(CODES3, EOS)
    model = build_t5(20, "tiny", pad_token_id=0, eos_token_id=EOS).eval()
    enc = {"input_ids": torch.randint(3, 20, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    with pytest.raises(ValueError, match="no catalogue item is available for example 1"):
        fixed_length_beam_search(model, enc, trie, 2, excluded=[[], list(range(16))])
    fixed_length_beam_search(model, enc, trie, 2)
    assert {m.config._attn_implementation for m in model.modules() if hasattr(m, "config")} == {"sdpa"}
    assert supports_fixed_length_search(model, trie) and not supports_fixed_length_search(model, ItemTrie([[10], [11, 12]], EOS))
