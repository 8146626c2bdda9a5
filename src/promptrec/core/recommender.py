"""The recommender contract shared by every model (baselines and LM recommenders alike).

A recommender follows the estimator habits: ``__init__`` only stores parameters, ``fit(split)``
learns from the training part of a :class:`~promptrec.data.Split` and returns ``self``, and

    recommend(user_ids, k=10, exclude_seen=True, stage="test", histories=None, candidates=None)
        -> pd.DataFrame

answers with columns ``user_id, item_id, score, rank`` (rank 1-based, higher score = better),
at most ``k`` rows per user, rows grouped by user in the order of ``user_ids`` and then by rank.
Ids are **external** ids (strings) on the way in and out. ``stage`` picks the history a user is
represented by: ``"valid"`` -> the training history, ``"test"`` -> training history plus the
validation item (the leave-one-out protocol). ``histories`` (user -> item ids, oldest first)
replaces the stored history of the users it names: live feedback, or a user the model never saw.
``candidates`` (user -> item ids) restricts each named user's answer to those items. With
``exclude_seen`` no item of the history is returned. Users without history get the model's
cold-start answer.

The rest of the contract, which the CLI, the evaluation harness, serving, ``update`` and the
simulator rely on (and nothing else):

- ``fit(split)`` learns from scratch; ``update(split)`` continues from the fitted state on a new
  split (a warm start where the model can, else a refit; ``fit_info_["update"]`` says which);
- ``history(user, stage)``, ``catalogue()`` and ``item_table()`` (titles and attributes, possibly
  empty) describe what the model knows;
- ``fit_info_`` holds what fitting measured (seconds, epochs, ...), saved with the model;
- optional answers beyond ranking, announced by ``capabilities()``: ``"score"`` (P(like) of
  (user, item) pairs) and ``"rate"`` (expected star ratings);
- ``extra_metrics(split, stage, users)`` adds a model's own metrics to an evaluation (default none).

A fitted model is saved with ``save_pretrained(dir)`` into a self-sufficient directory whose
``promptrec_config.json`` holds, for every model alike, the registered name (``"recommender"``),
the package version, the constructor ``"params"`` and the ``"fit_info"``, so
:func:`load_recommender` can restore it without the training pipeline. The file is not called
``config.json`` so that it never collides with a Hugging Face backbone config.

Models that score every catalogue item (the baselines) derive from :class:`ScoringRecommender`,
which implements ``recommend`` once on top of their ``_scores``.
"""

from __future__ import annotations

import inspect
import json
import logging
from abc import ABC, abstractmethod
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Self, Sequence

import numpy as np
import pandas as pd

from .. import __version__
from .items import DISPLAY_COLUMNS, load_item_table, save_item_table
from .registry import Registry

if TYPE_CHECKING:  # an annotation only: core imports nothing above it when it runs
    from ..data.split import Split

RECOMMENDATION_COLUMNS = ("user_id", "item_id", "score", "rank")
STAGES = ("valid", "test")
CONFIG_FILE = "promptrec_config.json"
ITEMS_FILE = "items.parquet"

# name -> Recommender subclass; each model registers itself in its own module.
RECOMMENDERS: Registry[type["Recommender"]] = Registry("recommender")

# The package whose import registers every built-in recommender (it imports each model package,
# each package imports its units, each unit registers itself); named here, not imported, since it
# sits above this module.
_BUILTIN_MODELS = "promptrec.models"

_NO_ITEMS = np.zeros(0, dtype=np.int64)


class Recommender(ABC):
    """Base class: subclasses set ``name`` (their registry name) and implement the abstract methods."""

    name: ClassVar[str]
    # Whether ``update`` continues from the fitted state (True) or refits from scratch.
    warm_starts: ClassVar[bool] = False
    # A tqdm bar on long work; the simulator and services switch it off.
    progress: bool = True
    fit_info_: dict[str, Any]

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, seed: int | None = None) -> Self:
        """A fresh model from constructor parameters (as saved in ``promptrec_config.json``);
        ``seed`` sets the model's seed unless ``params`` does."""
        params = dict(params or {})
        accepted = inspect.signature(cls).parameters
        # A constructor taking **kwargs validates them itself (a strict config).
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        unknown = [] if open_ended else sorted(set(params) - set(accepted))
        if unknown:
            raise ValueError(f"{cls.name}: unknown parameter {unknown[0]!r}; it takes {', '.join(accepted)}")
        if seed is not None and "seed" in accepted:
            params.setdefault("seed", seed)
        return cls(**params)

    @abstractmethod
    def fit(self, split: Split) -> Self:
        """Learn from ``split.train`` (and the histories of ``split``); return ``self``."""

    def fit_with_checkpoints(self, split: Split, directory: str | Path, resume: bool = False) -> Self:
        """``fit``, keeping checkpoints under ``directory`` where the model can; ``resume``
        continues from them. The default keeps none and fits again (the cheap models)."""
        if resume:
            logging.getLogger("promptrec").info("%s keeps no checkpoints: fitted again", self.name)
        return self.fit(split)

    def update(
        self,
        split: Split,
        *,
        epochs: int | None = None,
        seed: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Self:
        """Continue from the fitted state on ``split`` (new interactions); return ``self``.

        ``epochs``, ``seed`` and ``params`` (constructor parameters) apply to this update. The
        default refits from scratch with them, which is exact for models whose fit is cheap;
        models that can warm-start override it and set ``warm_starts``.
        """
        changed = dict(params or {})
        current = self.get_params()
        for key, value in (("epochs", epochs), ("seed", seed)):
            if value is not None and key in current:
                changed.setdefault(key, value)
        fresh = type(self).from_params({**current, **changed}) if changed else self
        fresh.progress = self.progress
        fresh.fit(split)
        vars(self).update(vars(fresh))
        self.fit_info_ = {**self.fit_info_, "update": {"warm_start": False}}
        return self

    @abstractmethod
    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude_seen: bool = True,
        stage: str = "test",
        histories: Mapping[str, Sequence[str]] | None = None,
        candidates: Mapping[str, Sequence[str]] | None = None,
    ) -> pd.DataFrame:
        """Top-``k`` items per user as a ``user_id, item_id, score, rank`` table (module doc)."""

    def ranked(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude_seen: bool = True,
        stage: str = "test",
        histories: Mapping[str, Sequence[str]] | None = None,
        candidates: Mapping[str, Sequence[str]] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """``recommend`` as one ``(item_id, score)`` list per user, best first, in the order of
        ``user_ids`` (each listed once): what a server answers per request. The default reads the
        table; a model whose ranking yields lists overrides it, since building and reading a
        frame costs a served batch of a few users as much as a small model's forward pass."""
        frame = self.recommend(user_ids, k=k, exclude_seen=exclude_seen, stage=stage, histories=histories,
                               candidates=candidates)
        rows: dict[str, list[tuple[str, float]]] = {}
        # Rows come grouped by user, best first; a plain pass is cheaper than a groupby.
        for u, i, s in zip(frame["user_id"].tolist(), frame["item_id"].tolist(), frame["score"].tolist()):
            rows.setdefault(u, []).append((i, s))
        return [rows.get(str(u), []) for u in user_ids]

    @abstractmethod
    def history(self, user: str, stage: str = "test") -> list[str]:
        """The user's stored history for ``stage``, oldest first (empty for an unknown user)."""

    def current_history(
        self, user: str, stage: str = "test", histories: Mapping[str, Sequence[str]] | None = None
    ) -> list[str]:
        """The history ``recommend`` answers from: ``histories[user]`` where given, else the stored one."""
        if histories is not None and user in histories:
            return [str(i) for i in histories[user]]
        return self.history(user, stage)

    @abstractmethod
    def catalogue(self) -> list[str]:
        """Every item the model can recommend (external ids)."""

    def users(self) -> list[str]:
        """Users with a stored history."""
        return sorted(set().union(*(self.stage_histories(s) for s in STAGES)))

    def stage_histories(self, stage: str) -> Mapping[str, Sequence[str]]:
        """user -> stored ``stage`` history, for every user the model knows."""
        raise NotImplementedError(f"{self.name} does not list its users")

    def item_table(self) -> pd.DataFrame:
        """Item metadata the model keeps (``title``, ``categories``, ...), indexed by item id."""
        return pd.DataFrame(index=pd.Index([], name="item_id"))

    def capabilities(self) -> frozenset[str]:
        """Answers beyond ranking: ``"score"`` (:meth:`score`), ``"rate"`` (:meth:`predict_rating`)."""
        return frozenset()

    def score(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        stage: str = "test",
        histories: Sequence[Sequence[str]] | None = None,
    ) -> np.ndarray:
        """P(the user likes the item) for each (user, item) pair; ``histories`` one per pair."""
        raise NotImplementedError(f"{self.name} does not score pairs")

    def predict_rating(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """Expected star rating for each (user, item) pair."""
        raise NotImplementedError(f"{self.name} does not predict ratings")

    def quantize(self, method: str) -> None:
        """Make the fitted model cheaper to serve in place (``"int8"``: dynamic int8 Linear layers)."""
        raise ValueError(f"{self.name} cannot be quantized ({method!r})")

    def use_runtime(self, runtime: str, cache_dir: str | Path | None = None) -> None:
        """Run inference on another engine, in place (``"onnx"``: ONNX Runtime, for the LM
        recommenders); ``"default"`` is the model's own code. ``cache_dir``: where an exported
        graph is kept for the next load of the same model."""
        if runtime != "default":
            raise ValueError(f"{self.name} has no runtime {runtime!r} (only 'default')")

    def extra_metrics(self, split: Split, stage: str, users: Sequence[str]) -> dict[str, Any]:
        """The model's own metrics on ``users`` beside the shared ranking ones (default: none)."""
        return {}

    @abstractmethod
    def save_pretrained(self, directory: str | Path) -> None:
        """Write all that ``from_pretrained`` needs, its config file included, to ``directory``."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, directory: str | Path) -> Self:
        """Restore a model written by ``save_pretrained``."""

    # -- helpers for subclasses ----------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor parameters, saved in the config file; override if ``__init__`` takes any."""
        return {}

    def _write_config(self, directory: str | Path) -> Path:
        """Create ``directory`` and write the config file (name, version, params, fit info)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "recommender": self.name,
            "promptrec_version": __version__,
            "params": self.get_params(),
            "fit_info": getattr(self, "fit_info_", {}),
        }
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
        return path

    @classmethod
    def _read_config(cls, directory: str | Path) -> dict[str, Any]:
        config = read_config(directory)
        if config["recommender"] != cls.name:
            raise ValueError(
                f"{directory} holds a {config['recommender']!r} model, not {cls.name!r}"
            )
        return config


class ScoringRecommender(Recommender):
    """Base class for models that score every catalogue item; subclasses implement ``_scores``.

    ``fit`` and ``from_pretrained`` set ``items_`` (column ``j`` of every score array is item
    ``items_[j]``) and ``histories_`` (per stage, user -> external item ids), then call
    ``_build_index``. ``recommend`` scores the users in blocks of ``block_size`` users, fewer
    where the catalogue is large: a block's dense (users, n_items) array holds at most
    ``block_cells`` scores, so memory stays bounded whatever the catalogue's size. It sets the history to -inf when ``exclude_seen`` (and every
    non-candidate where ``candidates`` are given) and keeps the ``k`` best finite scores per user.
    Equal scores go to the lower column: subclasses order their columns by a seeded permutation
    of the catalogue (popularity: by count, then by one), so that ties never follow the
    (possibly leaky) item ids.
    """

    block_size: ClassVar[int] = 1024  # 1024 users x 12k items of float32: ~50 MB
    # 2^24 float32 scores are 64 MB: 1024 users up to 16k items, 167 users at 10^5 items, 16 at
    # 10^6. A fixed user count would hold 4 GB per block at 10^6 items (and a copy of it in the
    # top-k partition); the per-block overhead is small next to 2^24 scores.
    block_cells: ClassVar[int] = 2**24
    # False for a model whose _recommend_block ranks without the dense array unless candidate
    # lists are given (popularity): its blocks are capped only for candidate lists.
    dense_scores: ClassVar[bool] = True
    items_: np.ndarray
    histories_: dict[str, dict[str, list[str]]]

    @abstractmethod
    def _scores(self, users: list[str], seen: list[np.ndarray]) -> np.ndarray:
        """A fresh (len(users), n_items) float array, higher = better, columns as ``items_``.

        ``seen[r]`` is user ``r``'s history as columns, oldest first (stored or explicit). Users
        the model cannot score (no history, unknown at fit) get its cold-start scores.
        ``recommend`` writes -inf into the array, so it must not be shared state.
        """

    @abstractmethod
    def _check_fitted(self) -> None:
        """Raise ``RuntimeError`` (saying "not fitted") unless the model is ready to score."""

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude_seen: bool = True,
        stage: str = "test",
        histories: Mapping[str, Sequence[str]] | None = None,
        candidates: Mapping[str, Sequence[str]] | None = None,
    ) -> pd.DataFrame:
        """Top-``k`` items per user by ``_scores``, the history excluded (module doc)."""
        self._check_fitted()
        check_stage(stage)
        k = check_k(k)
        users = [user_ids] if isinstance(user_ids, str) else [str(u) for u in user_ids]
        size = self.block_size
        if self.dense_scores or candidates is not None:
            size = max(1, min(size, self.block_cells // max(len(self.items_), 1)))
        blocks = []
        for i in range(0, len(users), size):
            block = users[i : i + size]
            seen = [
                self._columns(histories[u]) if histories is not None and u in histories
                else self._seen[stage].get(u, _NO_ITEMS)
                for u in block
            ]
            allowed = None
            if candidates is not None and any(u in candidates for u in block):
                allowed = [self._columns(candidates[u]) if u in candidates else None for u in block]
            blocks.append(self._recommend_block(block, k, seen, exclude_seen, allowed))
        if not blocks:
            return recommendation_frame([], [], [], [])
        return pd.concat(blocks, ignore_index=True)

    def _recommend_block(
        self,
        users: list[str],
        k: int,
        seen: list[np.ndarray],
        exclude_seen: bool,
        allowed: list[np.ndarray | None] | None,
    ) -> pd.DataFrame:
        scores = self._scores(users, seen)  # (B, n_items)
        if exclude_seen:
            scores[history_cells(seen)] = -np.inf
        if allowed is not None:
            outside = np.zeros(scores.shape, dtype=bool)  # (B, n_items) True: not a candidate
            for r, cols in enumerate(allowed):
                if cols is not None:
                    outside[r] = True
                    outside[r, cols] = False
            scores[outside] = -np.inf
        rows, cols, ranks = _top_k(scores, k)
        return recommendation_frame(
            np.asarray(users, dtype=object)[rows], self.items_[cols], scores[rows, cols], ranks
        )

    def _build_index(self) -> None:
        """Item id -> column (``_position``); per stage, user -> history as columns (``_seen``)."""
        self._position = pd.Index(self.items_)
        self._seen: dict[str, dict[str, np.ndarray]] = {}
        for stage, histories in self.histories_.items():
            # One lookup for all users, then cut per user: a lookup per user takes seconds on
            # tens of thousands of users.
            cols = self._position.get_indexer(list(chain.from_iterable(histories.values())))
            ends = np.cumsum([len(h) for h in histories.values()], dtype=np.int64)
            self._seen[stage] = dict(zip(histories, np.split(cols, ends[:-1])))

    def _columns(self, items: Sequence[str]) -> np.ndarray:
        """Columns of the catalogue items among ``items``, in order (others are dropped)."""
        cols = self._position.get_indexer([str(i) for i in items])
        return cols[cols >= 0]

    def _history(self, users: list[str], stage: str) -> list[np.ndarray]:
        """Each user's stored ``stage`` history as columns, oldest first (empty for unknown users)."""
        return [self._seen[stage].get(u, _NO_ITEMS) for u in users]

    # -- what the model knows -------------------------------------------------------------------
    def history(self, user: str, stage: str = "test") -> list[str]:
        check_stage(stage)
        return list(self.histories_[stage].get(str(user), []))

    def stage_histories(self, stage: str) -> Mapping[str, Sequence[str]]:
        return self.histories_[check_stage(stage)]

    def catalogue(self) -> list[str]:
        self._check_fitted()
        return self.items_.tolist()

    def item_table(self) -> pd.DataFrame:
        return getattr(self, "item_info_", super().item_table())

    def _keep_item_table(self, split: Split) -> None:
        """Keep the split's item titles and attributes: for display and serving, not for scoring."""
        items = split.data.items
        self.item_info_ = items[[c for c in DISPLAY_COLUMNS if c in items]].copy()

    def _write_config(self, directory: str | Path) -> Path:
        path = super()._write_config(directory)
        if hasattr(self, "item_info_"):
            save_item_table(self.item_info_, path / ITEMS_FILE)
        return path

    def _read_item_table(self, directory: str | Path) -> None:
        """Restore what ``_keep_item_table`` kept (nothing for a model saved without it)."""
        if (Path(directory) / ITEMS_FILE).exists():
            self.item_info_ = load_item_table(Path(directory) / ITEMS_FILE)


def history_cells(seen: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every history entry, row ``r`` being ``seen[r]``: indexes a (B, n) array."""
    rows = np.repeat(np.arange(len(seen)), [len(s) for s in seen])
    return rows, np.concatenate([_NO_ITEMS, *seen])


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` best finite cells of each row of ``scores`` (B, n), equal scores by column.

    Returns flat ``rows, cols, ranks`` (1-based), by row and then by rank; a row with fewer than
    ``k`` finite scores (-inf marks excluded items) gives fewer cells.
    """
    n = scores.shape[1]
    k = min(k, n)
    # Every cell at least as good as the row's k-th best score is a candidate: k per row, more
    # only where that score is tied. O(n) per row, where a full sort would be O(n log n).
    kth = np.partition(scores, n - k, axis=1)[:, n - k]  # (B,)
    rows, cols = np.nonzero(scores >= kth[:, None])  # by row, then column
    values = scores[rows, cols]
    order = np.lexsort((-values, rows))  # stable: by row, score descending, then column
    rows, cols, values = rows[order], cols[order], values[order]
    ranks = np.arange(len(rows)) - np.searchsorted(rows, rows) + 1  # position within the row
    keep = (ranks <= k) & np.isfinite(values)
    return rows[keep], cols[keep], ranks[keep]


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return stage


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def recommendation_frame(
    user_ids: Sequence[str] | np.ndarray,
    item_ids: Sequence[str] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    ranks: Sequence[int] | np.ndarray,
) -> pd.DataFrame:
    """The contract's output table from flat, already ordered columns (one entry per row)."""
    # The dict is in column order already; without ``columns=`` pandas skips a reindex, a third
    # of the cost of this frame on a served request.
    return pd.DataFrame(
        {
            "user_id": np.asarray(user_ids, dtype=object),
            "item_id": np.asarray(item_ids, dtype=object),
            "score": np.asarray(scores, dtype=float),
            "rank": np.asarray(ranks, dtype=np.int64),
        },
        copy=False,
    )


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a saved promptrec model directory")
    return json.loads(path.read_text())


def _lookup(name: str) -> type[Recommender]:
    import importlib

    if name not in RECOMMENDERS:
        importlib.import_module(_BUILTIN_MODELS)
    return RECOMMENDERS.get(name)


def build_recommender(
    name: str, params: Mapping[str, Any] | None = None, *, seed: int | None = None, **more: Any
) -> Recommender:
    """A fresh, unfitted recommender by registry name, e.g. ``build_recommender("sasrec", {"epochs": 5})``;
    ``seed`` seeds it unless the parameters do (:meth:`Recommender.from_params`)."""
    return _lookup(name).from_params({**(params or {}), **more}, seed=seed)


def recommender_names() -> list[str]:
    """Every registered recommender name (the built-in ones imported first)."""
    import importlib

    importlib.import_module(_BUILTIN_MODELS)
    return RECOMMENDERS.names()


def load_recommender(directory: str | Path) -> Recommender:
    """Restore any saved recommender from its directory (the class is named in its config file)."""
    return _lookup(read_config(directory)["recommender"]).from_pretrained(directory)


__all__ = [
    "RECOMMENDATION_COLUMNS",
    "RECOMMENDERS",
    "Recommender",
    "ScoringRecommender",
    "build_recommender",
    "check_k",
    "check_stage",
    "history_cells",
    "load_recommender",
    "recommender_names",
    "read_config",
    "recommendation_frame",
]
