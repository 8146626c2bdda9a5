"""Random item ids: a distinct random number per item, written as ``levels`` base-``base`` digits.

This is the leak-free baseline of Hua et al. (2023): the code carries no information about the
item at all, so whatever the model learns about an item it learns from training interactions.
With ``levels=1`` it is *independent* indexing (one new, unique token per item); with more
levels items share digit tokens, which keeps the vocabulary small (about ``levels * n**(1/levels)``
tokens) at the price of arbitrary sharing between unrelated items.

The digit helpers here are shared with :mod:`.sequential`, which writes its numbers the same way.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .base import INDEXERS, LEVEL_NAMES, ItemIndexer, level_token


def smallest_base(n_items: int, levels: int) -> int:
    """The smallest ``B >= 2`` with ``B**levels >= n_items`` (exact integer arithmetic)."""
    base = max(2, int(round(max(n_items, 1) ** (1.0 / levels))))
    while base > 2 and (base - 1) ** levels >= n_items:
        base -= 1
    while base**levels < n_items:
        base += 1
    return base


def digit_code(value: int, levels: int, base: int) -> tuple[str, ...]:
    """``value`` as ``levels`` base-``base`` digits, most significant first, one token per level."""
    digits = []
    for level in range(levels):
        digits.append(level_token(level, (value // base ** (levels - 1 - level)) % base))
    return tuple(digits)


def check_params(name: str, params: Mapping[str, Any], allowed: set[str]) -> None:
    """Reject misspelt parameters early: a silently ignored ``level=3`` would fit the default."""
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"{name} indexer: unknown parameter(s) {unknown}; known: {sorted(allowed)}")


def _positive_int(name: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} indexer: {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class DigitIndexer(ItemIndexer):
    """Shared parameter handling for indexers that write an integer as fixed-length digits.

    Params: ``levels`` (tokens per item, default 2, at most 26) and ``base`` (digits per level,
    default: the smallest base whose ``levels``-digit numbers cover the catalogue).
    """

    def __init__(self, seed: int = 0, **params: Any) -> None:
        super().__init__(seed=seed, **params)
        check_params(self.name, params, {"levels", "base"})
        self.levels = _positive_int(self.name, "levels", params.get("levels", 2), 1)
        if self.levels > len(LEVEL_NAMES):
            raise ValueError(
                f"{self.name} indexer: levels must be <= {len(LEVEL_NAMES)}, got {self.levels}"
            )
        base = params.get("base")
        self.base: int | None = None if base is None else _positive_int(self.name, "base", base, 2)

    def _base_for(self, n_items: int) -> int:
        if self.base is None:
            return smallest_base(n_items, self.levels)
        if self.base**self.levels >= 2**63:
            raise ValueError(f"{self.name} indexer: base**levels must fit in int64")
        if self.base**self.levels < n_items:
            raise ValueError(
                f"{self.name} indexer: base {self.base} with {self.levels} levels gives "
                f"{self.base**self.levels} codes for {n_items} items"
            )
        return self.base


@INDEXERS.register("random")
class RandomIndexer(DigitIndexer):
    """Distinct random numbers in ``[0, base**levels)``, drawn with ``default_rng(seed)``."""

    name = "random"

    def _fit(
        self,
        train_sequences: Mapping[str, Sequence[str]],
        catalogue: list[str],
        items: pd.DataFrame | None,
    ) -> None:
        base = self._base_for(len(catalogue))
        # Sorting first makes the codes a function of (seed, set of ids) only, not of the order a
        # loader happened to list the catalogue in.
        ordered = sorted(catalogue)
        rng = np.random.default_rng(self.seed)
        numbers = rng.choice(base**self.levels, size=len(ordered), replace=False)  # (n_items,)
        self.codes = {item: digit_code(int(v), self.levels, base) for item, v in zip(ordered, numbers)}
