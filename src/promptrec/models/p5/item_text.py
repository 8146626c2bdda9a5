"""Item embeddings that keep a learned map of the item's text (``train.text_projection``).

``model.item_init=text`` starts every item token at a PCA of its text vector, and
``train.item_anchor`` pulls the rows back toward that start; the map from text to embedding stays
the PCA's. Here the map is learned: during training an item row is ``free row + text @ M``, with
``M`` (encoder width x model width) starting as the PCA map and the free rows as the start minus
it (zero on the PCA's columns). Every item's events teach ``M``, so what the catalogue's text
says is re-read in the directions the task needs, also for the rare items whose own rows learn
little; the anchor then pulls the free rows toward their start.

``train.item_attributes`` adds one learned vector per item attribute (each category and brand that
at least two catalogue items share), started at zero: an item row gains the mean of its
attributes' vectors. Text vectors place a brand or a category only where the sentence encoder
happens to put its name; these learn what buying within it means, from every item that has it.

It is a ``torch.nn.utils.parametrize`` parametrization of the embedding matrix (and of the tied
output layer, which reads the same matrix), so every reader of ``.weight`` (the forward pass, the
item-only softmax, ranking) sees the sum. :func:`bake` writes the sum into a plain weight when
training ends, and :func:`plain_state_dict` when a model is saved mid-run: a saved model is a
plain transformers model that needs neither the text vectors nor this module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn.functional import embedding_bag
from torch.nn.utils import parametrize


def attribute_table(items: pd.DataFrame, catalogue: Sequence[str], min_items: int = 2) -> torch.Tensor:
    """The attributes of each catalogue item as a (items, most attributes) index matrix padded
    with -1: its categories and its brand (kept apart from a category of the same name), each
    counted only where at least ``min_items`` catalogue items have it (one item's own attribute
    would only duplicate its row). Item metadata only, no interactions."""
    rows = items.reindex(list(catalogue))  # an item missing from the table has no attributes
    empty = pd.Series(None, index=rows.index, dtype=object)  # a column the table lacks
    categories, brands = rows.get("categories", empty), rows.get("brand", empty)
    names: list[set[str]] = []
    for item_categories, brand in zip(categories, brands):
        found: set[str] = set()
        if isinstance(item_categories, (list, tuple)):
            found.update(f"category:{c}" for c in item_categories if isinstance(c, str) and c)
        if isinstance(brand, str) and brand.strip():
            found.add(f"brand:{brand.strip()}")
        names.append(found)
    counts = Counter(name for found in names for name in found)
    vocabulary = {name: i for i, name in enumerate(sorted(n for n, c in counts.items() if c >= min_items))}
    if not vocabulary:
        raise ValueError(
            "train.item_attributes found no category or brand that two items share: the item table needs "
            "'categories' (lists) or 'brand' columns"
        )
    ids = [sorted(vocabulary[n] for n in found if n in vocabulary) for found in names]
    table = torch.full((len(ids), max(1, max(map(len, ids)))), -1, dtype=torch.long)
    for r, row_ids in enumerate(ids):
        table[r, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
    return table


class TextProjection(nn.Module):
    """``weight`` plus, on the item rows, the item text vectors times a learned map (and, with an
    attribute table, the mean of the item's learned attribute vectors)."""

    def __init__(
        self, rows: torch.Tensor, text: torch.Tensor, projection: torch.Tensor, attributes: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        # Not saved with the model: a saved model has the sum baked in (module doc).
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("text", text, persistent=False)
        # A copy: the map trains in place, and the start it was given (which a checkpoint keeps
        # for a resumed run's anchor) must stay the start.
        self.projection = nn.Parameter(projection.detach().clone())
        self.attribute_vectors: nn.Parameter | None = None
        if attributes is not None:
            count = int(attributes.max()) + 1
            # -1 pads; embedding_bag leaves its padding row out of the mean (an empty bag is zero).
            self.register_buffer("attributes", attributes.masked_fill(attributes < 0, count), persistent=False)
            # Zero: the item rows start where the text put them, and the anchor's target holds.
            self.attribute_vectors = nn.Parameter(projection.new_zeros(count + 1, projection.shape[1]))

    def text_part(self) -> torch.Tensor:
        part = self.text @ self.projection
        if self.attribute_vectors is not None:
            padding = self.attribute_vectors.shape[0] - 1
            part = part + embedding_bag(self.attributes, self.attribute_vectors, mode="mean", padding_idx=padding)
        return part

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.index_add(0, self.rows, self.text_part().to(weight.dtype))


def _tied(model: Any) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def add_text_projection(
    model: Any, rows: torch.Tensor, text: torch.Tensor, projection: torch.Tensor, attributes: torch.Tensor | None = None
) -> nn.Parameter:
    """Install :class:`TextProjection` on ``model``'s embedding matrix (and its tied output layer)
    in place; the item rows' stored values become the start minus the text part, so the model
    computes what it did before. Returns the free matrix (what ``train.item_anchor`` pulls)."""
    inp = model.get_input_embeddings()
    tied = _tied(model)
    if not tied and model.get_output_embeddings() is not None:
        raise ValueError("train.text_projection needs input and output item embeddings tied (the built-in backbones)")
    device = inp.weight.device
    text_projection = TextProjection(
        rows.to(device), text.to(inp.weight), projection.to(inp.weight),
        None if attributes is None else attributes.to(device),
    )
    with torch.no_grad():
        inp.weight.index_add_(0, text_projection.rows, -text_projection.text_part())
    # unsafe: the map changes the values, not the shape or dtype, and the tied layer shares it
    parametrize.register_parametrization(inp, "weight", text_projection, unsafe=True)
    if tied:
        parametrize.register_parametrization(model.get_output_embeddings(), "weight", text_projection, unsafe=True)
    return inp.parametrizations.weight.original


def bake(model: Any) -> None:
    """Write the learned sum into the embedding matrix and remove the parametrization, in place."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if not parametrize.is_parametrized(inp, "weight"):
        return
    parametrize.remove_parametrizations(inp, "weight", leave_parametrized=True)
    if out is not None and parametrize.is_parametrized(out, "weight"):  # tied: share the baked matrix again
        parametrize.remove_parametrizations(out, "weight", leave_parametrized=False)
        out.weight = inp.weight


def plain_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` as a plain model would have it: the sum baked in, if installed."""
    state = model.state_dict()
    # Not a deep copy with the parametrization removed: a copy shares the class that
    # parametrize creates for each module, and removing it from the copy removes it from the model.
    baked: dict[int, torch.Tensor] = {}  # one sum per stored matrix, so tied layers stay one tensor
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            prefix = f"{name}." if name else ""
            for key in [k for k in state if k.startswith(f"{prefix}parametrizations.weight.")]:
                del state[key]
            key = id(module.parametrizations.weight.original)
            if key not in baked:  # the sum is a full matrix product: computed once for tied layers
                baked[key] = module.weight.detach()
            state[f"{prefix}weight"] = baked[key]
    return state
