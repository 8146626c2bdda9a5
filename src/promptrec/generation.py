"""Trie-constrained decoding over the catalogue, through transformers' generation hooks.

The trie is built once per catalogue from the item indexer's codes (each code followed by EOS).
:class:`TrieConstraint` is a ``LogitsProcessor``: at each step it leaves only the tokens that
continue some *available* item — one that is in the catalogue, not in the user's history, and,
for candidate-list tasks, in the list. Beam search therefore returns distinct, valid items, and a
user's history can never come out. A prefix with nothing available fails loudly.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
from transformers import LogitsProcessor

NEG_INF = float("-inf")
# Beam search marks beams that could only take masked tokens with a huge negative score (-inf or,
# in recent transformers, -1e9); anything below this is such a padding beam, never a real item.
MASKED_SCORE = -1e8


class ItemTrie:
    """Prefix tree over token-id codes. Node 0 is the root; a leaf is the node after EOS."""

    def __init__(self, codes: Sequence[Sequence[int]], eos_token_id: int) -> None:
        self.eos = eos_token_id
        self.children: list[dict[int, int]] = [{}]
        self.size: list[int] = [0]  # items under each node
        self.leaf_item: dict[int, int] = {}  # leaf node -> item index
        self.paths: list[list[int]] = []  # item index -> nodes from depth 1 to the leaf
        self.depth = 0
        for index, code in enumerate(codes):
            node, path = 0, []
            self.size[0] += 1
            for tok in [*code, eos_token_id]:
                nxt = self.children[node].get(tok)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][tok] = nxt
                    self.children.append({})
                    self.size.append(0)
                self.size[nxt] += 1
                node = nxt
                path.append(node)
            if node in self.leaf_item:
                raise ValueError(f"items {self.leaf_item[node]} and {index} share a code")
            self.leaf_item[node] = index
            self.paths.append(path)
            self.depth = max(self.depth, len(path))
        self._child_tokens = [list(ch) for ch in self.children]
        # With equal-length (prefix-free) codes the item is known once its last token is out, so
        # decoding can stop there and skip the step that could only emit EOS.
        lengths = {len(p) - 1 for p in self.paths}
        self.code_length: int | None = lengths.pop() if len(lengths) == 1 else None

    def __len__(self) -> int:
        return len(self.paths)

    def walk(self, tokens: Sequence[int]) -> int | None:
        node = 0
        for tok in tokens:
            node = self.children[node].get(tok)  # type: ignore[assignment]
            if node is None:
                return None
        return node

    def item_of(self, tokens: Sequence[int]) -> int | None:
        """Item index for a generated token sequence, else None.

        Anything after EOS is ignored; a complete code without its EOS (decoding stopped at the
        code length) also names its item.
        """
        node = 0
        for tok in tokens:
            node = self.children[node].get(tok)  # type: ignore[assignment]
            if node is None:
                return None
            if tok == self.eos:
                break
        if node not in self.leaf_item:
            node = self.children[node].get(self.eos, node)
        return self.leaf_item.get(node)

    @property
    def decode_steps(self) -> int:
        """Generation steps needed: the code length when fixed, else the deepest code plus EOS."""
        return self.code_length or self.depth

    def counts(self, items: Sequence[int]) -> Counter:
        """How many of ``items`` lie under each node (used for exclusion and candidate lists)."""
        return Counter(n for i in items for n in (0, *self.paths[i]))


class TrieConstraint(LogitsProcessor):
    """Mask every token that does not continue an available catalogue item.

    excluded[b]: item indices never to produce for batch example ``b`` (its history).
    allowed[b]: if given, only these item indices may be produced for ``b`` (a candidate list).
    Rows are ``b * num_beams + beam`` as in transformers' beam search.
    """

    def __init__(
        self,
        trie: ItemTrie,
        num_beams: int,
        excluded: Sequence[Sequence[int]] | None = None,
        allowed: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.trie = trie
        self.num_beams = num_beams
        # Either a pool of available items per example (candidate lists, history removed) or the
        # excluded items per example; both stored as item counts per trie node.
        self.pools: list[Counter] | None = None
        self.excluded: list[Counter] | None = None
        if allowed is not None:
            ex = excluded if excluded is not None else [()] * len(allowed)
            self.pools = [trie.counts(sorted(set(a) - set(e))) for a, e in zip(allowed, ex)]
            n = len(allowed)
        elif excluded is not None:
            self.excluded = [trie.counts(sorted(set(e))) for e in excluded]
            n = len(excluded)
        else:
            n = 0
        for b in range(n):
            if self._available(b, 0) <= 0:
                raise ValueError(
                    f"constrained decoding: no catalogue item is available for example {b} "
                    "(every item is excluded or the candidate list is empty)"
                )

    def _available(self, b: int, node: int) -> int:
        if self.pools is not None:
            return self.pools[b].get(node, 0)
        if self.excluded is not None:
            return self.trie.size[node] - self.excluded[b].get(node, 0)
        return self.trie.size[node]

    def _tokens(self, b: int, node: int) -> list[int]:
        if self.pools is None and (self.excluded is None or self.excluded[b].get(node, 0) == 0):
            return self.trie._child_tokens[node]
        return [tok for tok, child in self.trie.children[node].items() if self._available(b, child) > 0]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: (B * num_beams, t) decoder tokens so far, the first being the start token.
        prefixes = input_ids[:, 1:].tolist()
        rows: list[int] = []
        cols: list[int] = []
        cache: dict[tuple[int, int], list[int]] = {}
        for r, prefix in enumerate(prefixes):
            b = r // self.num_beams
            node = self.trie.walk(prefix)
            if node is None or self._available(b, node) <= 0:
                # A beam that already took a masked token (only when fewer items than beams are
                # available): its score is -inf; let it end so it can be dropped afterwards.
                toks = [self.trie.eos]
            else:
                key = (b, node)
                toks = cache.get(key)
                if toks is None:
                    toks = cache[key] = self._tokens(b, node)
                if not toks:
                    raise ValueError(f"constrained decoding: nothing can follow prefix {prefix}")
            rows.extend([r] * len(toks))
            cols.extend(toks)
        mask = torch.full_like(scores, NEG_INF)
        mask[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = 0.0
        return scores + mask


def collect_beams(
    trie: ItemTrie, sequences: list[list[int]], scores: list[float], num_beams: int, constrained: bool = True
) -> list[list[tuple[int | None, float]]]:
    """Group beam outputs per example as (item index or None, score), best first.

    Under the constraint, padding beams (fewer available items than beams) and repeats of an
    item are dropped; without it, every beam is kept so invalid outputs can be counted.
    """
    out = []
    for b in range(len(sequences) // num_beams):
        row: list[tuple[int | None, float]] = []
        seen: set[int] = set()
        for j in range(b * num_beams, (b + 1) * num_beams):
            idx = trie.item_of(sequences[j])
            if constrained:
                if idx is None or scores[j] <= MASKED_SCORE or idx in seen:
                    continue
                seen.add(idx)
            row.append((idx, scores[j]))
        out.append(row)
    return out
