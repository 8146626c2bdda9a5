"""Beyond-accuracy metrics of top-K recommendation lists: coverage, diversity, novelty, popularity
bias and fairness between user groups.

Every function reads recommendations as a long table ``user_id, item_id, rank`` (the
:mod:`promptrec.core.recommender` output; ``score`` is not needed) and the training part of a
:class:`~promptrec.data.Split` for popularity, so nothing about the validation or test items leaks
into the numbers. Per-list quantities are averaged per user first and then over users, so every
user weighs the same whatever the length of their list. Ids that are not catalogue items (a
generative model's invalid output) are ignored by these metrics; the invalid-output rate reports
them.

:func:`beyond_accuracy` computes all of them at one cutoff K as a flat dict (``"coverage@10"``,
``"ILD@10"``, ``"novelty@10"``, ``"avg_popularity@10"``, ``"gini@10"``,
``"NDCG@10_gap_active_vs_inactive"``, ``"NDCG@10_group[gender=F]"``, ...);
:func:`beyond_summary` does it at several cutoffs.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import pandas as pd
from scipy import sparse

from ..data.split import Split

ACTIVITY_SHARE = 0.2  # the most / least active fifth of users


# -- helpers -----------------------------------------------------------------------------------
def _by_user(recs: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by user (first appearance) then rank, so each user's list is contiguous."""
    user_code = pd.factorize(recs["user_id"])[0]
    order = np.lexsort((recs["rank"].to_numpy(), user_code))
    return recs.iloc[order].assign(_user=user_code[order]).reset_index(drop=True)


def _user_mean(user_code: np.ndarray, values: np.ndarray) -> float:
    """Mean over users of each user's mean value; NaN values and users without a value are skipped."""
    keep = ~np.isnan(values)
    if not keep.any():
        return float("nan")
    codes = pd.factorize(user_code[keep])[0]
    per_user = np.bincount(codes, weights=values[keep]) / np.bincount(codes)
    return float(per_user.mean())


def train_item_counts(split: Split) -> pd.Series:
    """Training interactions per catalogue item, indexed by ``item_id``; items never seen have 0."""
    catalogue = split.data.items.index
    counts = split.train["item_id"].value_counts().reindex(catalogue, fill_value=0)
    return counts.astype(np.int64).rename("train_count")


# -- list metrics ------------------------------------------------------------------------------
def coverage(recs: pd.DataFrame, catalogue: pd.Index) -> float:
    """Catalogue coverage: ``|(U_u L_u) & I| / |I|``, distinct recommended catalogue items over
    catalogue size, where ``L_u`` is user u's list and ``I`` the catalogue. NaN for an empty catalogue.
    """
    if len(catalogue) == 0:
        return float("nan")
    recommended = pd.Index(recs["item_id"].unique())
    return float(recommended.isin(catalogue).sum() / len(catalogue))


def intra_list_diversity(
    recs: pd.DataFrame,
    categories: pd.Series | None = None,
    embeddings: pd.DataFrame | None = None,
) -> float:
    """Intra-list diversity: ``ILD = mean_u [ mean_{i < j in L_u} d(i, j) ]``.

    With ``categories`` (item_id -> list of category names):
    ``d(i, j) = 1 - |C_i & C_j| / |C_i | C_j|`` (one minus Jaccard similarity of the sets).
    With ``embeddings`` (a frame indexed by item_id, one vector per row; takes precedence):
    ``d(i, j) = 1 - e_i . e_j / (|e_i| |e_j|)`` (one minus cosine similarity).

    Pairs with an item that has no categories, no or a zero embedding, or is not in the catalogue
    carry no information and are skipped, as are users left without a pair. NaN if no pair is left.
    """
    if embeddings is None and categories is None:
        raise ValueError("intra_list_diversity needs item categories or item embeddings")
    recs = _by_user(recs)
    n = len(recs)
    user_code = recs["_user"].to_numpy()
    # Every pair of positions within a list, vectorised over users: row r (at position p of a list
    # of length L) pairs with the L - p - 1 rows after it.
    start = np.searchsorted(user_code, user_code)  # (n,) first row of each row's user
    length = np.bincount(user_code)[user_code]  # (n,)
    partners = length - (np.arange(n) - start) - 1  # (n,)
    first = np.repeat(np.arange(n), partners)  # (n_pairs,)
    pair_start = np.repeat(np.cumsum(partners) - partners, partners)
    second = first + (np.arange(len(first)) - pair_start) + 1  # (n_pairs,)

    if embeddings is not None:
        vectors = embeddings.to_numpy(dtype=float)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        codes = embeddings.index.get_indexer(recs["item_id"])
        codes[(codes >= 0) & (norms[codes, 0] == 0)] = -1
    else:
        members = _category_matrix(categories)  # (n_items, n_categories) 0/1
        sizes = np.asarray(members.sum(axis=1)).ravel()
        codes = categories.index.get_indexer(recs["item_id"])
        codes[(codes >= 0) & (sizes[codes] == 0)] = -1

    a, b = codes[first], codes[second]
    keep = (a >= 0) & (b >= 0)
    a, b, owner = a[keep], b[keep], user_code[first[keep]]
    distance = np.empty(len(a))
    # Chunks bound the (chunk, dim) gathers: millions of pairs for large evaluations.
    chunk = 1 << 18
    for lo in range(0, len(a), chunk):
        ca, cb = a[lo : lo + chunk], b[lo : lo + chunk]
        if embeddings is not None:
            similarity = np.einsum("pd,pd->p", unit[ca], unit[cb])
        else:
            shared = np.asarray(members[ca].multiply(members[cb]).sum(axis=1)).ravel()
            similarity = shared / (sizes[ca] + sizes[cb] - shared)
        distance[lo : lo + chunk] = 1.0 - similarity
    return _user_mean(owner, distance)


def _category_matrix(categories: pd.Series) -> sparse.csr_matrix:
    """``(n_items, n_categories)`` 0/1 matrix; row i = item ``categories.index[i]``.

    Lists, tuples and arrays (a list column read back from Parquet) are category sets; missing
    values are empty sets; a bare string is a one-category set.
    """
    flat = pd.Series(categories.to_numpy(), index=np.arange(len(categories))).explode().dropna()
    cols, names = pd.factorize(flat.astype(str))
    matrix = sparse.csr_matrix(
        (np.ones(len(flat)), (flat.index.to_numpy(dtype=np.int64), cols)),
        shape=(len(categories), len(names)),
    )
    matrix.data[:] = 1.0  # a category listed twice for an item is still one membership
    return matrix


def novelty(recs: pd.DataFrame, item_counts: pd.Series) -> float:
    """Mean self-information of recommended items: ``mean_u mean_{i in L_u} -log2 p(i)``, where
    ``p(i) = c_i / sum_j c_j`` is item i's share of training interactions (``item_counts``).

    An item with no training interaction is counted as seen once (``c_i = 1``), so that its
    self-information is large but finite. NaN when there are no training interactions.
    """
    total = item_counts.sum()
    if total == 0:
        return float("nan")
    recs = _by_user(recs)
    counts = item_counts.reindex(recs["item_id"]).to_numpy(dtype=float)  # NaN: not a catalogue item
    information = -np.log2(np.maximum(counts, 1.0) / total)
    return _user_mean(recs["_user"].to_numpy(), information)


def average_popularity(recs: pd.DataFrame, item_counts: pd.Series) -> float:
    """Popularity bias: ``mean_u mean_{i in L_u} c_i``, the mean training-interaction count
    ``c_i`` of recommended items (higher = closer to recommending the bestsellers to everyone).
    """
    recs = _by_user(recs)
    counts = item_counts.reindex(recs["item_id"]).to_numpy(dtype=float)
    return _user_mean(recs["_user"].to_numpy(), counts)


def gini(values: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of non-negative values:
    ``G = sum_i (2i - n - 1) x_(i) / (n sum_i x_i)``, with ``x_(1) <= ... <= x_(n)`` and i from 1.

    0 when all values are equal; ``(n - 1) / n`` when one value holds everything. NaN when all are 0.
    """
    x = np.sort(np.asarray(values, dtype=float))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return float("nan")
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def exposure_gini(recs: pd.DataFrame, catalogue: pd.Index) -> float:
    """Gini coefficient (:func:`gini`) of exposure counts, how many lists each catalogue item is in,
    over **all** catalogue items, never-recommended ones included (their 0 is the point).
    """
    codes = catalogue.get_indexer(recs["item_id"])
    return gini(np.bincount(codes[codes >= 0], minlength=len(catalogue)))


# -- fairness between user groups --------------------------------------------------------------
def activity_gap(values: pd.Series, activity: pd.Series, share: float = ACTIVITY_SHARE) -> dict[str, float]:
    """Gap of a per-user metric between the most and the least active users.

    ``values``: metric per user (indexed by user_id); ``activity``: training interactions per user
    (missing users count 0). With ``n`` users and ``m = max(1, floor(share * n))``, ``active`` is the
    mean over the ``m`` users with the most interactions, ``inactive`` over the ``m`` with the
    fewest, and ``gap = active - inactive``. Equal activity is ordered by the order of ``values``
    (a stable sort), so the split is deterministic. NaN for fewer than two users.
    """
    n = len(values)
    if n < 2:
        return {"active": float("nan"), "inactive": float("nan"), "gap": float("nan")}
    counts = activity.reindex(values.index, fill_value=0).to_numpy()
    order = np.argsort(counts, kind="stable")  # least active first
    m = max(1, int(share * n))
    metric = values.to_numpy(dtype=float)
    inactive, active = float(metric[order[:m]].mean()), float(metric[order[-m:]].mean())
    return {"active": active, "inactive": inactive, "gap": active - inactive}


def group_means(values: pd.Series, groups: pd.Series) -> dict[str, float]:
    """Mean of a per-user metric in each group: ``mean_{u : g(u) = g} m_u`` for each group label g.

    ``values`` and ``groups`` are indexed by user_id; users without a group label are left out.
    Labels come out in the groups' sort order (categories' order for a categorical).
    """
    labels = groups.reindex(values.index)
    means = values.groupby(labels, observed=True, sort=True).mean()
    return {str(label): float(mean) for label, mean in means.items()}


def default_user_groups(users: pd.DataFrame | None, max_groups: int = 10) -> dict[str, pd.Series]:
    """User attributes usable as fairness groups, from a users table (e.g. MovieLens'):

    - text, categorical or boolean columns with 2 to ``max_groups`` distinct values, as they are
      (gender; occupation has 21 values and is left out);
    - numeric columns with at most ``max_groups`` distinct values, as they are (MovieLens-1M age
      codes); with more, binned at their quartiles into labels ``[lo, hi)`` (MovieLens-100K age).
    """
    if users is None:
        return {}
    out: dict[str, pd.Series] = {}
    for name in users.columns:
        column = users[name].dropna()
        distinct = column.nunique()
        if distinct < 2:
            continue
        if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
            if distinct <= max_groups:
                out[str(name)] = column.astype(str)
        elif distinct <= max_groups:
            out[str(name)] = column
        else:
            out[str(name)] = _quartile_bins(column.astype(float))
    return out


def _quartile_bins(column: pd.Series) -> pd.Series:
    """Bins ``[q0, q1), [q1, q2), [q2, q3), [q3, q4]`` at the quartiles, as an ordered categorical.

    Quartiles are taken among the observed values (``method="lower"``), so integer ages give
    integer edges; repeated edges merge bins.
    """
    values = column.to_numpy(dtype=float)
    edges = np.unique(np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0], method="lower"))
    labels = [f"[{lo:g}, {hi:g})" for lo, hi in pairwise(edges)]
    labels[-1] = labels[-1][:-1] + "]"  # the top bin includes the maximum
    codes = np.searchsorted(edges[1:-1], values, side="right")  # value == edge goes up a bin
    return pd.Series(pd.Categorical.from_codes(codes, labels, ordered=True), index=column.index)


# -- entry points ------------------------------------------------------------------------------
def beyond_accuracy(
    recs: pd.DataFrame,
    split: Split,
    k: int = 10,
    per_user: pd.DataFrame | None = None,
    metric: str | None = "NDCG@10",
    user_groups: dict[str, pd.Series] | None = None,
    item_embeddings: np.ndarray | pd.DataFrame | None = None,
) -> dict[str, float]:
    """All beyond-accuracy metrics of the top ``k`` of each list in ``recs`` (``user_id, item_id,
    rank``), popularity taken from ``split.train``.

    Keys: ``coverage@k``, ``novelty@k``, ``avg_popularity@k``, ``gini@k`` (exposure), and
    ``ILD@k`` when there is something to measure distance with: ``item_embeddings`` (an array with
    one row per catalogue item in ``split.data.items.index`` order, or a frame indexed by item_id)
    or else the items' ``categories`` column.

    With ``per_user`` (a table with ``user_id`` and a ``metric`` column, as
    :func:`~promptrec.evaluation.ranking.evaluate_rankings` returns) and a ``metric`` name, also the
    fairness keys: ``{metric}_gap_active_vs_inactive`` and ``{metric}_group[activity=active]`` /
    ``[activity=inactive]`` (see :func:`activity_gap`), and ``{metric}_group[{name}={label}]`` for
    each of ``user_groups`` (name -> label per user_id; see :func:`default_user_groups`).
    """
    top = recs.loc[recs["rank"] <= k, ["user_id", "item_id", "rank"]]
    catalogue = split.data.items.index
    counts = train_item_counts(split)
    out = {
        f"coverage@{k}": coverage(top, catalogue),
        f"novelty@{k}": novelty(top, counts),
        f"avg_popularity@{k}": average_popularity(top, counts),
        f"gini@{k}": exposure_gini(top, catalogue),
    }
    if item_embeddings is not None:
        if not isinstance(item_embeddings, pd.DataFrame):
            item_embeddings = pd.DataFrame(np.asarray(item_embeddings), index=catalogue)
        out[f"ILD@{k}"] = intra_list_diversity(top, embeddings=item_embeddings)
    elif "categories" in split.data.items.columns:
        out[f"ILD@{k}"] = intra_list_diversity(top, categories=split.data.items["categories"])

    if per_user is None or metric is None:
        return out
    if metric not in per_user.columns:
        raise ValueError(f"per_user has no column {metric!r}; it has {list(per_user.columns)}")
    values = per_user.set_index("user_id")[metric].astype(float)
    activity = split.train["user_id"].value_counts()
    gap = activity_gap(values, activity)
    out[f"{metric}_gap_active_vs_inactive"] = gap["gap"]
    out[f"{metric}_group[activity=active]"] = gap["active"]
    out[f"{metric}_group[activity=inactive]"] = gap["inactive"]
    for name, groups in (user_groups or {}).items():
        for label, mean in group_means(values, groups).items():
            out[f"{metric}_group[{name}={label}]"] = mean
    return out


def beyond_summary(
    recs: pd.DataFrame,
    split: Split,
    per_user: pd.DataFrame | None = None,
    ks: Sequence[int] = (5, 10, 20),
    user_groups: dict[str, pd.Series] | None = None,
    item_embeddings: np.ndarray | pd.DataFrame | None = None,
) -> dict[str, float]:
    """:func:`beyond_accuracy` at each cutoff in ``ks``; fairness on ``NDCG@K`` where ``per_user``
    has that column.
    """
    out: dict[str, float] = {}
    for k in sorted(set(ks)):
        metric = f"NDCG@{k}" if per_user is not None and f"NDCG@{k}" in per_user.columns else None
        out.update(beyond_accuracy(recs, split, k, per_user, metric, user_groups, item_embeddings))
    return out


__all__ = [
    "activity_gap",
    "average_popularity",
    "beyond_accuracy",
    "beyond_summary",
    "coverage",
    "default_user_groups",
    "exposure_gini",
    "gini",
    "group_means",
    "intra_list_diversity",
    "novelty",
    "train_item_counts",
]
