"""The evaluation harness: one way to turn any recommender into numbers.

Protocol (the evaluation contract of the project): leave-one-out per user, ranking over **all**
catalogue items, the user's history excluded from the ranking (and checked, not trusted), outputs
that are not catalogue items counted as misses with their rate reported.

Recommender contract (see :mod:`promptrec.core.recommender`; every model implements it)::

    recommend(user_ids: Sequence[str], k: int = 10, exclude_seen: bool = True,
              stage: str = "test") -> pd.DataFrame

- returns columns ``user_id, item_id, score, rank``; ``rank`` is 1-based, rows are grouped by user
  (in the order of ``user_ids``) and sorted by rank; at most ``k`` rows per user;
- takes and returns **external** ids (strings);
- ``stage`` says which history represents the user: ``"valid"`` -> the training history,
  ``"test"`` -> the training history plus the validation item (the standard leave-one-out
  protocol: the validation item is known when predicting the test item);
- with ``exclude_seen`` no item of that history is returned;
- users with no history get the model's cold-start answer.
"""

from __future__ import annotations

import sys
import time
import warnings
from itertools import chain
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..core import distributed
from ..core.recommender import RECOMMENDATION_COLUMNS, Recommender, check_k
from ..data.split import Split
from .beyond import beyond_summary, default_user_groups
from .metrics import DEFAULT_RANKING_METRICS, RankingMetric, parse_metric, summarise
from .metrics import invalid_rate as _invalid_rate


def evaluate_rankings(
    recommender: Recommender,
    split: Split,
    stage: str = "test",
    k: int = 20,
    users: Sequence[str] | None = None,
    batch_size: int = 1024,
    metrics: Sequence[str] = DEFAULT_RANKING_METRICS,
    *,
    beyond: bool = False,
    progress: bool = False,
    histories: dict[str, list[str]] | None = None,
    shard: bool = True,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """All-item leave-one-out ranking evaluation of ``recommender`` on ``split``.

    ``histories`` (user -> items) is passed to ``recommend`` in place of the model's stored
    histories, e.g. to score a model on the new histories of an update before it learns them.

    Asks for the top ``k`` items of every evaluated user (those of ``split.targets(stage)``, or the
    subset ``users``), in batches of ``batch_size``, and scores each list against the user's single
    held-out item. Every metric cutoff must be ``<= k`` (a list of k items cannot say anything
    about rank k + 1); ``MRR`` without a cutoff is taken over the returned ``k`` items.

    Returns ``(summary, per_user)``:

    - ``summary``: the mean of each metric (``"HR@10"``, ...) plus ``eval_users``, ``k``,
      ``eval_seconds`` (wall time spent inside ``recommend``, i.e. the model's cost, not the
      harness's), ``users_per_second``, ``invalid_rate`` (fraction of returned items not in the
      catalogue ``split.data.items.index``; they are misses), ``history_violations`` (returned
      items that are in the user's ``split.history(stage)``; 0 for a correct recommender; a
      warning is issued otherwise) and ``history_excluded`` (exclusion was asked for and no
      violation was found).
    - ``per_user``: one row per evaluated user, in the order of ``split.targets(stage)``:
      ``user_id``, ``target``, ``rank`` (1-based rank of the target in the returned list, ``<NA>``
      when absent), ``recommended`` (the returned item ids in rank order, a list per user; see
      :func:`recommended_items` for the long form) and one column per metric.

    With ``beyond`` the summary also holds the beyond-accuracy metrics of
    :func:`promptrec.evaluation.beyond.beyond_summary` (coverage, ILD, novelty, popularity, Gini, fairness
    between user groups) at every cutoff of ``metrics``, with groups from ``split.data.users``.

    Launched as several processes (``accelerate launch``), with ``shard`` the users are split
    between them in blocks of whole batches and their lists gathered, so every process returns the
    same summary and table as one process would, to the last digit (``eval_seconds`` is then the
    slowest process's). Each process holds the scores of one batch at a time, plus the gathered
    top-``k`` lists. Every process must then make the call; ``shard=False`` evaluates all users
    in this process alone.
    """
    k = check_k(k)
    parsed = [parse_metric(m) for m in metrics]
    for m in parsed:
        if not isinstance(m, RankingMetric):
            raise ValueError(f"{m.name} is not a ranking metric")
        if m.k is not None and m.k > k:
            raise ValueError(f"{m.name} needs at least {m.k} recommendations, but k={k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")

    targets = split.targets(stage)
    if users is not None:
        wanted = pd.Index([str(u) for u in users])
        unknown = wanted.difference(targets["user_id"])
        if len(unknown):
            raise ValueError(
                f"{len(unknown)} user(s) have no {stage} target, e.g. {unknown[0]!r}"
            )
        targets = targets[targets["user_id"].isin(wanted)]
    user_ids = targets["user_id"].tolist()
    n_users = len(user_ids)

    # Under `accelerate launch` each process ranks its own block of whole batches, so every user
    # is scored in the very batch a one-process run puts it in (a model's scores may depend on
    # the batch's shape in the last bits) and the gathered lists are those of one process.
    mine = distributed.shard(n_users, batch_size) if shard else range(n_users)
    elapsed = 0.0
    returned: list[pd.DataFrame] = []
    starts = range(mine.start, mine.stop, batch_size)
    if progress and (not shard or distributed.is_main()):
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"evaluate ({stage})", unit="batch", mininterval=0.1 if sys.stderr.isatty() else 30.0)
    for i in starts:
        batch = user_ids[i : min(i + batch_size, mine.stop)]
        start = time.perf_counter()
        given = {} if histories is None else {"histories": {u: histories[u] for u in batch if u in histories}}
        recs = recommender.recommend(batch, k=k, exclude_seen=True, stage=stage, **given)
        elapsed += time.perf_counter() - start
        _check_output(recs, batch, k)
        returned.append(recs[list(RECOMMENDATION_COLUMNS)])
    if shard and distributed.world_size() > 1:
        # Only the top-k lists travel (users x k rows), never scores over the catalogue; the
        # wall time is that of the slowest process.
        parts = distributed.gather((returned, elapsed))
        returned = [r for part, _ in parts for r in part]
        elapsed = max(seconds for _, seconds in parts)
    recs = pd.concat(returned, ignore_index=True) if returned else _empty_recommendations()

    # Integer codes for every returned row: its user's position in user_ids and its item's position
    # in the catalogue (-1 for an id that is not a catalogue item).
    catalogue = split.data.items.index
    row_user = pd.Index(user_ids).get_indexer(recs["user_id"])  # (n_rows,)
    row_item = catalogue.get_indexer(recs["item_id"])  # (n_rows,)

    # Exclusion is checked, not trusted: count returned (user, item) pairs from the user's history,
    # comparing pairs as int64 keys user * (n_items + 1) + item + 1.
    # Only the evaluated users' histories: a block of users costs its own rows, not the log's.
    history = split.history(stage, users=None if users is None else user_ids)
    seen = [history.get(u, []) for u in user_ids]
    seen_user = np.repeat(np.arange(n_users), [len(s) for s in seen])
    seen_item = catalogue.get_indexer(list(chain.from_iterable(seen)))
    stride = len(catalogue) + 1
    seen_keys = seen_user * stride + seen_item + 1
    in_history = (row_item >= 0) & np.isin(row_user * stride + row_item + 1, seen_keys)
    violations = int(in_history.sum())
    if violations:
        warnings.warn(
            f"{type(recommender).__name__} returned {violations} item(s) from users' histories",
            stacklevel=2,
        )

    # Rank of each user's target: rows in (user, rank) order, position within the user's list,
    # the smallest position where the item is the target; users never hit keep inf.
    order = np.lexsort((recs["rank"].to_numpy(), row_user))
    row_user, item_ids = row_user[order], recs["item_id"].to_numpy(dtype=object)[order]
    group_start = np.searchsorted(row_user, row_user)  # first row of each row's user
    position = np.arange(len(row_user)) - group_start + 1  # (n_rows,) 1-based
    target_ids = targets["item_id"].to_numpy(dtype=object)
    hit = item_ids == target_ids[row_user]
    ranks = np.full(n_users, np.inf)
    np.minimum.at(ranks, row_user[hit], position[hit].astype(float))
    per_user_metrics = {m.name: m.from_ranks(ranks) for m in parsed}
    # Each user's list, cut from the (user, rank)-ordered item ids; users with no rows get [].
    cuts = np.cumsum(np.bincount(row_user, minlength=n_users))[:-1]
    recommended = [chunk.tolist() for chunk in np.split(item_ids, cuts)] if n_users else []

    per_user = pd.DataFrame(
        {
            "user_id": user_ids,
            "target": target_ids,
            "rank": pd.array([int(r) if np.isfinite(r) else pd.NA for r in ranks], dtype="Int64"),
            "recommended": pd.Series(recommended, dtype=object),
            **per_user_metrics,
        }
    )
    summary: dict[str, Any] = {
        **summarise(per_user_metrics),
        "eval_users": n_users,
        "k": k,
        "eval_seconds": elapsed,
        "users_per_second": n_users / elapsed if elapsed > 0 else float("inf"),
        "invalid_rate": _invalid_rate(recs["item_id"], catalogue),
        "history_violations": violations,
        "history_excluded": violations == 0,
    }
    if beyond:
        cutoffs = sorted({m.k for m in parsed if m.k is not None}) or [k]
        groups = default_user_groups(split.data.users)
        summary.update(beyond_summary(recs, split, per_user, ks=cutoffs, user_groups=groups))
    return summary, per_user


def evaluate_recommender(
    recommender: Recommender,
    split: Split,
    stage: str = "test",
    k: int = 20,
    users: Sequence[str] | None = None,
    batch_size: int = 256,
    *,
    progress: bool = False,
    shard: bool = True,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """:func:`evaluate_rankings` plus the model's own :meth:`~Recommender.extra_metrics` on the
    same users: what ``promptrec evaluate`` reports for any saved model. With several processes
    the ranking is sharded (``shard``); the extra metrics are not: each process computes them on
    all the users, with the same result."""
    summary, per_user = evaluate_rankings(
        recommender, split, stage=stage, k=k, users=users, batch_size=batch_size, progress=progress, shard=shard
    )
    summary.update(recommender.extra_metrics(split, stage, per_user["user_id"].tolist()))
    return summary, per_user


def sample_users(split: Split, stage: str, n: int, seed: int = 0) -> list[str] | None:
    """A seeded sample of ``n`` users with a ``stage`` target, in split order; None = all (n = 0
    or n >= their number). Every entry of one evaluation table is scored on the same sample."""
    users = split.targets(stage)["user_id"].tolist()
    if not n or n >= len(users):
        return None
    chosen = set(np.random.default_rng(seed).choice(users, n, replace=False).tolist())
    return [u for u in users if u in chosen]


def recommended_items(per_user: pd.DataFrame) -> pd.DataFrame:
    """The ``recommended`` lists of a per-user table as a long ``user_id, item_id, rank`` table
    (rank 1-based, rows grouped by user in the table's order), the form
    :mod:`promptrec.evaluation.beyond` reads and run directories store.
    """
    lengths = per_user["recommended"].map(len).to_numpy(dtype=np.int64)
    items = list(chain.from_iterable(per_user["recommended"]))
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return pd.DataFrame(
        {
            "user_id": np.repeat(per_user["user_id"].to_numpy(dtype=object), lengths),
            "item_id": pd.Series(items, dtype=object),
            "rank": np.arange(len(items), dtype=np.int64) - starts + 1,
        }
    )


def _check_output(recs: pd.DataFrame, batch: list[str], k: int) -> None:
    """Fail loudly on a recommender that breaks the contract's shape (columns, users, k)."""
    missing = set(RECOMMENDATION_COLUMNS) - set(recs.columns)
    if missing:
        raise ValueError(f"recommend() output lacks column(s) {sorted(missing)}")
    stray = pd.Index(recs["user_id"].unique()).difference(batch)
    if len(stray):
        raise ValueError(f"recommend() returned user(s) it was not asked for, e.g. {stray[0]!r}")
    per_user = recs["user_id"].value_counts()
    if len(per_user) and per_user.max() > k:
        raise ValueError(
            f"recommend() returned {per_user.max()} items for user {per_user.idxmax()!r}, k={k}"
        )


def _empty_recommendations() -> pd.DataFrame:
    dtypes = {"user_id": object, "item_id": object, "score": float, "rank": np.int64}
    return pd.DataFrame({c: pd.Series(dtype=dtypes[c]) for c in RECOMMENDATION_COLUMNS})


def format_table(
    results: dict[str, dict[str, float]],
    keys: Sequence[str] = DEFAULT_RANKING_METRICS,
) -> str:
    """A markdown table, one row per model name, one column per key, values to 4 decimals.

    Keys a model has no value for are shown as ``-``.
    """

    def cell(value: Any) -> str:
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            return f"{float(value):.4f}"
        return "-" if value is None else str(value)

    header = ["model", *keys]
    rows = [[name, *(cell(res.get(key)) for key in keys)] for name, res in results.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # Model names left-aligned, numbers right-aligned so decimals line up.
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    ) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


__all__ = ["evaluate_rankings", "format_table", "recommended_items"]
