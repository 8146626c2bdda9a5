"""The recommender contract shared by every model (baselines and LM recommenders alike).

A recommender follows the estimator habits: ``__init__`` only stores parameters, ``fit(split)``
learns from the training part of a :class:`~promptrec.data.Split` and returns ``self``, and

    recommend(user_ids, k=10, exclude_seen=True, stage="test") -> pd.DataFrame

answers with columns ``user_id, item_id, score, rank`` (rank 1-based, higher score = better),
at most ``k`` rows per user, rows grouped by user in the order of ``user_ids`` and then by rank.
Ids are **external** ids (strings) on the way in and out. ``stage`` picks the history a user is
represented by: ``"valid"`` -> the training history, ``"test"`` -> training history plus the
validation item (the leave-one-out protocol). With ``exclude_seen`` no item of that history is
returned. Users without history get the model's cold-start answer.

A fitted model is saved with ``save_pretrained(dir)`` into a self-sufficient directory whose
``promptrec_config.json`` names the registered recommender (key ``"recommender"``), so
:func:`load_recommender` can restore it without the training pipeline. The file is not called
``config.json`` so that it never collides with a Hugging Face backbone config.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self, Sequence

import numpy as np
import pandas as pd

from . import __version__
from .data.split import Split
from .registry import Registry

RECOMMENDATION_COLUMNS = ("user_id", "item_id", "score", "rank")
STAGES = ("valid", "test")
CONFIG_FILE = "promptrec_config.json"

# name -> Recommender subclass; each model registers itself in its own module.
RECOMMENDERS: Registry[type["Recommender"]] = Registry("recommender")

# Modules whose import registers the built-in recommenders, cheapest first; imported only until the
# wanted name is registered, so loading a baseline never pulls in torch.
_BUILTIN_MODULES = ("promptrec.baselines", "promptrec.model")


class Recommender(ABC):
    """Base class: subclasses set ``name`` (their registry name) and implement the four methods."""

    name: ClassVar[str]

    @abstractmethod
    def fit(self, split: Split) -> Self:
        """Learn from ``split.train`` (and the histories of ``split``); return ``self``."""

    @abstractmethod
    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude_seen: bool = True,
        stage: str = "test",
    ) -> pd.DataFrame:
        """Top-``k`` items per user as a ``user_id, item_id, score, rank`` table (module doc)."""

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
        """Create ``directory`` and write the config file (name, params, package version)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "recommender": self.name,
            "promptrec_version": __version__,
            "params": self.get_params(),
        }
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        return path

    @classmethod
    def _read_config(cls, directory: str | Path) -> dict[str, Any]:
        config = read_config(directory)
        if config["recommender"] != cls.name:
            raise ValueError(
                f"{directory} holds a {config['recommender']!r} model, not {cls.name!r}"
            )
        return config


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
    return pd.DataFrame(
        {
            "user_id": np.asarray(user_ids, dtype=object),
            "item_id": np.asarray(item_ids, dtype=object),
            "score": np.asarray(scores, dtype=float),
            "rank": np.asarray(ranks, dtype=np.int64),
        },
        columns=list(RECOMMENDATION_COLUMNS),
    )


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a saved promptrec model directory")
    return json.loads(path.read_text())


def _lookup(name: str) -> type[Recommender]:
    import importlib

    for module in _BUILTIN_MODULES:
        if name in RECOMMENDERS:
            break
        importlib.import_module(module)
    return RECOMMENDERS.get(name)


def build_recommender(name: str, **params: Any) -> Recommender:
    """A fresh, unfitted recommender by registry name, e.g. ``build_recommender("popularity")``."""
    return _lookup(name)(**params)


def load_recommender(directory: str | Path) -> Recommender:
    """Restore any saved recommender from its directory (the class is named in its config file)."""
    return _lookup(read_config(directory)["recommender"]).from_pretrained(directory)


__all__ = [
    "RECOMMENDATION_COLUMNS",
    "RECOMMENDERS",
    "Recommender",
    "build_recommender",
    "check_k",
    "check_stage",
    "load_recommender",
    "read_config",
    "recommendation_frame",
]
