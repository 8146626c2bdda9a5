"""Sequential item ids, numbered from training sequences only.

P5 numbered items 1, 2, 3, ... in order of first appearance while walking the users' *full*
sequences, test items included (that is how the Beauty file's integer ids were made). A test item
that a user was the first to buy then gets the number right after the items in that user's
history, so "predict the next number" is partly readable from the prompt itself: the evaluation
leaks the answer.

Here the walk sees ``train_sequences`` only: users in the order given (a loader's file order, as
P5 walked them; :meth:`Split.train_sequences` keeps it), items in chronological order within each
user. A number therefore depends only on training interactions: appending, removing or changing
validation/test items elsewhere cannot move any training item's number. Catalogue items that never
occur in training get the numbers after all training items, in a seeded random order of the sorted
ids, so their codes carry neither held-out sequence order nor the source file's numbering.
Consecutive numbers still encode training co-occurrence, which is legitimate training signal.

Numbers are written as ``levels`` base-``base`` digits, like :mod:`.random_ids`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .base import INDEXERS
from .random_ids import DigitIndexer, digit_code


@INDEXERS.register("sequential")
class SequentialIndexer(DigitIndexer):
    """Consecutive numbers in order of first appearance in training, then unseen items at random."""

    name = "sequential"

    def _fit(
        self,
        train_sequences: Mapping[str, Sequence[str]],
        catalogue: list[str],
        items: pd.DataFrame | None,
    ) -> None:
        known = set(catalogue)
        order: dict[str, None] = {}  # insertion-ordered set: item -> None, in first-appearance order
        for user, sequence in train_sequences.items():
            for item in map(str, sequence):
                if item not in known:
                    raise ValueError(
                        f"sequential indexer: training item {item!r} of user {user!r} "
                        "is not in the catalogue"
                    )
                order.setdefault(item, None)
        unseen = sorted(known.difference(order))
        rng = np.random.default_rng(self.seed)
        ranked = list(order) + [unseen[i] for i in rng.permutation(len(unseen))]
        base = self._base_for(len(ranked))
        self.codes = {item: digit_code(number, self.levels, base) for number, item in enumerate(ranked)}
