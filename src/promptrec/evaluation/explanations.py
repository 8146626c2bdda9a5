"""Explanations against what users wrote themselves: the tags protocol.

A (user, movie) pair counts when the user both rated and tagged the movie (MovieLens latest-small
``tags.csv``). The movie is explained as if recommended to the user right before they rated it,
from their items before it; the reference is that user's own tags on that movie, joined by ", "
("funny, will ferrell"). Too few users tag their leave-one-out test movie (7 of 610 in
latest-small), hence every tagged pair, at most ``per_user`` per user (a seeded draw), so that
one prolific tagger does not make up the sample.

Tags are one or two words: BLEU/ROUGE here measure how many of the user's tag words a sentence
contains, not how good the sentence is. They mean something only beside baselines scored the
same way on the same references (:func:`baseline_texts`): the title alone, a genre template
("Title (year) is a comedy, romance film."), and the generator's own sentence for another pair
(a seeded derangement: the overlap any fluent movie sentence gets, whatever the movie).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .significance import paired_test
from .text import segment_rouge, text_overlap

if TYPE_CHECKING:
    from ..data import InteractionData


def tagged_pairs(data: InteractionData, per_user: int = 10, seed: int = 0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(user_id, item_id, history, reference) per pair the user rated and tagged, at most
    ``per_user`` per user, in a seeded shuffled order (a run cut short still spans the users);
    ``history``: the user's items before it, oldest first. Also the counts behind the sample."""
    if data.tags is None:
        raise ValueError(f"{data.name} has no tags: the tags protocol needs user-written tags (MovieLens tags.csv)")
    if per_user < 1:
        raise ValueError(f"per_user must be >= 1, got {per_user}")
    tags = data.tags.sort_values("timestamp", kind="stable")
    refs = tags.groupby(["user_id", "item_id"], sort=True)["tag"].agg(lambda t: ", ".join(dict.fromkeys(t)))
    sequences = data.sequences()
    rows = []
    for (user, item), reference in refs.items():
        seq = sequences.get(user, [])
        if item in seq:
            rows.append((user, item, seq[: seq.index(item)], reference))
    pairs = pd.DataFrame(rows, columns=["user_id", "item_id", "history", "reference"])
    if pairs.empty:
        raise ValueError(f"{data.name}: no user both rated and tagged the same item")
    rng = np.random.default_rng(seed)
    keep = []
    for _, group in pairs.groupby("user_id", sort=True):
        keep.extend(sorted(rng.choice(group.index, min(per_user, len(group)), replace=False)))
    counts = {
        "tag_rows": len(data.tags),
        "tagging_users": int(data.tags["user_id"].nunique()),
        "tagged_pairs": len(refs),
        "tagged_and_rated_pairs": len(pairs),
        "users_with_tagged_and_rated_pairs": int(pairs["user_id"].nunique()),
        "largest_user_share_before_cap": round(float(pairs["user_id"].value_counts().iloc[0] / len(pairs)), 3),
        "per_user_cap": per_user,
    }
    sample = pairs.loc[keep].sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return sample, counts


def _title(items: pd.DataFrame, item: str) -> str:
    """The item's title from the item table, or its id where it has none."""
    title = items.at[item, "title"] if "title" in items else None
    return title if isinstance(title, str) else item


def genre_sentence(items: pd.DataFrame, item: str) -> str:
    """"Title (year) is a comedy, romance film." from the item table (title and categories)."""
    title = _title(items, item)
    genres = [str(g).lower() for g in items.at[item, "categories"]] if "categories" in items else []
    return f"{title} is a {', '.join(genres)} film." if genres else f"{title} is a film."


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed point (n >= 2)."""
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2, got {n}")
    rng = np.random.default_rng(seed)
    while True:
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return p


def baseline_texts(items: pd.DataFrame, item_ids: Sequence[str], generated: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
    """The generated sentences beside the baselines scored on the same references (module doc)."""
    generated = list(generated)
    texts = {
        "llm": generated,
        "title": [_title(items, i) for i in item_ids],
        "genre template": [genre_sentence(items, i) for i in item_ids],
    }
    if len(generated) >= 2:
        texts["other pair's sentence"] = [generated[j] for j in derangement(len(generated), seed)]
    return texts


def score_against_references(
    texts: dict[str, Sequence[str]], references: Sequence[str], seed: int = 0
) -> dict[str, Any]:
    """BLEU/ROUGE of every text stream against the references, and paired tests of per-pair
    ROUGE-1 F1 of ``texts["llm"]`` minus each other stream."""
    overlap = {name: {k: round(v, 4) for k, v in text_overlap(list(hyps), list(references)).items()}
               for name, hyps in texts.items()}
    per_pair = {name: pd.Series(segment_rouge(list(hyps), list(references))["rouge1_f"]) for name, hyps in texts.items()}
    paired = {}
    if len(references) >= 2:
        for name in texts:
            if name != "llm":
                test = paired_test(per_pair["llm"], per_pair[name], seed=seed)
                paired[f"llm - {name}"] = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in test.items()}
    return {"overlap": overlap, "paired_rouge1_f": paired}


__all__ = ["baseline_texts", "derangement", "genre_sentence", "score_against_references", "tagged_pairs"]
