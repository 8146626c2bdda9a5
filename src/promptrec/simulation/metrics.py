"""Per-round metrics of a simulation, computed on position arrays (no DataFrames in the loop).

For the slates ``S`` (U, K) shown in a round to the visiting users and their reactions:

- ``ctr`` = clicks / items shown; ``conversion`` = conversions / items shown;
- ``satisfaction`` = mean oracle P(like) of the consumed (clicked) items;
- ``retention`` = users still active after the round / all users;
- ``coverage`` = distinct items shown / catalogue size (aggregate diversity);
- ``gini`` = Gini coefficient of exposure (times shown) over the whole catalogue
  (:func:`promptrec.evaluation.beyond.gini`; never-shown items count as 0);
- ``popularity`` = ``mean_u mean_{i in S_u} pop(i)``, ``pop(i)`` = share of users who
  interacted with i in the *initial* (real) log, a fixed yardstick across rounds;
- ``ild`` = intra-list diversity, ``mean_u mean_{i<j in S_u} (1 - cos(g_i, g_j))`` over genre
  vectors (pairs with an item without genres skipped), as
  :func:`promptrec.evaluation.beyond.intra_list_diversity` with embeddings;
- per user group (``group[<grouping>=<value>]``): ctr, satisfaction, popularity and coverage of
  the group's slates, and per grouping the gap (``gap[<grouping>]_<metric>``) between its first
  and its last group in the grouping's order (activity: most minus least active fifth; gender:
  M minus F; age: younger minus older).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..evaluation.beyond import gini
from .choice import Outcome

GROUP_METRICS = ("ctr", "satisfaction", "popularity", "coverage")


def intra_list_diversity(slates: np.ndarray, genres: np.ndarray) -> float:
    """``mean_u mean_{i<j} (1 - cos(g_i, g_j))`` of (U, K) slates (module doc); NaN without pairs."""
    real = slates >= 0
    g = genres[np.where(real, slates, 0)] * real[..., None]  # (U, K, C), rows already unit length
    has = np.linalg.norm(g, axis=-1) > 0  # (U, K)
    cos = np.einsum("ukc,ujc->ukj", g, g)  # (U, K, K)
    k = slates.shape[1]
    upper = np.triu(np.ones((k, k), dtype=bool), 1)[None]
    valid = upper & has[:, :, None] & has[:, None, :]  # (U, K, K)
    pairs = valid.sum((1, 2))
    per_user = np.where(valid, 1.0 - cos, 0.0).sum((1, 2)) / np.maximum(pairs, 1)
    return float(per_user[pairs > 0].mean()) if (pairs > 0).any() else float("nan")


def _slate_metrics(out: Outcome, mask: np.ndarray, popularity: np.ndarray, n_items: int) -> dict[str, float]:
    """ctr, satisfaction, popularity, coverage of the users selected by ``mask`` (U_r,)."""
    slates = out.slates[mask]
    real = slates >= 0
    shown = real.sum()
    clicked = out.clicked[mask]
    if shown == 0:
        return {m: float("nan") for m in GROUP_METRICS}
    pop = np.where(real, popularity[np.where(real, slates, 0)], 0.0)
    per_user_pop = pop.sum(1) / np.maximum(real.sum(1), 1)
    return {
        "ctr": float(clicked.sum() / shown),
        "satisfaction": float(out.p[mask][clicked].mean()) if clicked.any() else float("nan"),
        "popularity": float(per_user_pop[real.any(1)].mean()),
        "coverage": float(len(np.unique(slates[real])) / n_items),
    }


def round_metrics(
    out: Outcome,
    active: np.ndarray,
    n_items: int,
    popularity: np.ndarray,
    genres: np.ndarray,
    groups: dict[str, tuple[np.ndarray, list[str]]],
) -> dict[str, Any]:
    """All per-round metrics (module doc). ``groups``: grouping -> (label code per user position,
    -1 = none; the label names in gap order)."""
    slates = out.slates
    real = slates >= 0
    shown = max(int(real.sum()), 1)
    exposure = np.bincount(slates[real], minlength=n_items)
    everyone = np.ones(len(out.users), dtype=bool)
    row: dict[str, Any] = {
        "users": int(len(out.users)),
        "retention": float(active.mean()),
        "left": int(out.left.sum()),
        "clicks": int(out.clicked.sum()),
        "ctr": float(out.clicked.sum() / shown),
        "conversion": float(out.converted.sum() / shown),
        "satisfaction": float(out.p[out.clicked].mean()) if out.clicked.any() else float("nan"),
        "coverage": float((exposure > 0).sum() / n_items),
        "gini": gini(exposure),
        "popularity": _slate_metrics(out, everyone, popularity, n_items)["popularity"],
        "ild": intra_list_diversity(slates, genres) if genres.shape[1] else float("nan"),
    }
    for grouping, (codes, names) in groups.items():
        user_codes = codes[out.users]
        values = {}
        for c, name in enumerate(names):
            mask = user_codes == c
            values[name] = _slate_metrics(out, mask, popularity, n_items)
            for metric, value in values[name].items():
                row[f"group[{grouping}={name}]_{metric}"] = value
        first, last = values[names[0]], values[names[-1]]
        for metric in GROUP_METRICS:
            row[f"gap[{grouping}]_{metric}"] = first[metric] - last[metric]
    return row


def heldout_accuracy(ranked: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """HR@K and NDCG@K of (U, K) ranked item positions against one target position per user."""
    hit = ranked == targets[:, None]  # (U, K)
    rank = hit.argmax(1)
    found = hit.any(1)
    return {
        "HR": float(found.mean()) if len(found) else float("nan"),
        "NDCG": float(np.where(found, 1.0 / np.log2(rank + 2), 0.0).mean()) if len(found) else float("nan"),
    }


__all__ = ["GROUP_METRICS", "heldout_accuracy", "intra_list_diversity", "round_metrics"]
