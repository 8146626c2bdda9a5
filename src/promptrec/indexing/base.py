"""Item indexing: the one place that decides how an item is written as tokens.

An indexer is fitted on **training interactions only** (never validation or test items), covers
the whole catalogue, and is saved with the model. Its codes are used for training targets, for
items inside prompts, and for the decoding trie, so they can never disagree.

A code is a short tuple of token strings, e.g. ``("<a_12>", "<b_3>")``. Tokens are added to the
tokenizer vocabulary as whole tokens, so an item id is a fixed, short token sequence. No code may
be a prefix of another code (the trie relies on it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import pandas as pd

from ..core.registry import Registry

INDEXERS: Registry[type["ItemIndexer"]] = Registry("item indexer")

LEVEL_NAMES = "abcdefghijklmnopqrstuvwxyz"


def level_token(level: int, value: int) -> str:
    """Token for ``value`` at code position ``level``: ``<a_12>`` for level 0, ``<b_3>`` for 1 ..."""
    return f"<{LEVEL_NAMES[level]}_{value}>"


class ItemIndexer:
    """Base class. Subclasses set ``name``, implement ``_fit`` and fill ``self.codes``."""

    name: ClassVar[str]

    def __init__(self, seed: int = 0, **params: Any) -> None:
        self.seed = seed
        self.params = params
        self.codes: dict[str, tuple[str, ...]] = {}

    # -- fitting -------------------------------------------------------------------------------
    def fit(
        self,
        train_sequences: Mapping[str, Sequence[str]],
        catalogue: Sequence[str],
        items: pd.DataFrame | None = None,
    ) -> "ItemIndexer":
        """Assign a code to every item of ``catalogue``.

        train_sequences: user -> chronological training items (validation/test items excluded).
        catalogue: every item id that may be recommended. Items absent from training get codes
            too, assigned without looking at any held-out interaction.
        items: the item table (title, categories, ...) for indexers that use text.
        """
        self.codes = {}
        self._fit(train_sequences, list(dict.fromkeys(map(str, catalogue))), items)
        self._check()
        return self

    def _fit(
        self,
        train_sequences: Mapping[str, Sequence[str]],
        catalogue: list[str],
        items: pd.DataFrame | None,
    ) -> None:
        raise NotImplementedError

    def _check(self) -> None:
        seen: dict[tuple[str, ...], str] = {}
        for item, code in self.codes.items():
            if code in seen:
                raise AssertionError(f"{self.name}: items {seen[code]!r} and {item!r} share code {code}")
            seen[code] = item
        prefixes = {code[:i] for code in seen for i in range(1, len(code))}
        clash = prefixes.intersection(seen)
        if clash:
            raise AssertionError(f"{self.name}: code {next(iter(clash))} is a prefix of another code")

    # -- use -----------------------------------------------------------------------------------
    def encode(self, item_id: str) -> tuple[str, ...]:
        try:
            return self.codes[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in the indexed catalogue") from None

    def text(self, item_id: str) -> str:
        """The item as it appears in prompt text: its tokens concatenated, e.g. ``<a_12><b_3>``."""
        return "".join(self.encode(item_id))

    def tokens(self) -> list[str]:
        """Every distinct token used by any code, in a deterministic order."""
        return sorted({t for code in self.codes.values() for t in code}, key=_token_sort_key)

    # -- persistence ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "params": self.params, "codes": self.codes}

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / "item_index.json"
        codes = {k: list(v) for k, v in self.codes.items()}
        path.write_text(json.dumps({**self.state(), "codes": codes}))

    @staticmethod
    def load(directory: str | Path) -> "ItemIndexer":
        raw = json.loads((Path(directory) / "item_index.json").read_text())
        cls = INDEXERS.get(raw["name"])
        obj = cls(seed=raw["seed"], **raw["params"])
        obj.codes = {k: tuple(v) for k, v in raw["codes"].items()}
        obj._check()
        return obj


def _token_sort_key(tok: str) -> tuple[str, int, str]:
    head, _, tail = tok.strip("<>").partition("_")
    return (head, int(tail) if tail.isdigit() else -1, tok)


def build_indexer(name: str, **params: Any) -> ItemIndexer:
    return INDEXERS.get(name)(**params)
