"""Typed configuration of a feedback-loop simulation. Every key is documented; unknown keys are
rejected. A config file (YAML or JSON) mirrors :class:`SimulationConfig`; see
``simulate_ml100k`` for a complete example.

A simulation is a grid: every entry of ``recommenders`` x ``updates`` x ``interventions`` x
``seeds`` is one run (its own directory, ``rounds.jsonl`` and checkpoints).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from ..core.config import DataConfig, FileConfig, _Strict


class OracleConfig(_Strict):
    """The ground-truth user model: logistic matrix factorisation on all real interactions."""

    factors: int = Field(32, ge=1, description="latent dimension of user and item vectors")
    epochs: int = Field(600, ge=1, description="maximum full-batch Adam steps")
    lr: float = Field(0.02, gt=0, description="Adam learning rate")
    reg: float = Field(0.05, ge=0, description="L2 weight on the mean squared row of each table (vectors and biases)")
    patience: int = Field(20, ge=1, description="steps without a better calibration-set log loss before stopping")
    like_threshold: float = Field(4.0, description="a rating >= this is a 'like' (explicit data)")
    negatives: int = Field(
        1, ge=1, description="implicit data (no ratings): unobserved items sampled per interaction as non-likes"
    )
    holdout: float = Field(0.2, gt=0, lt=1, description="share of observations held out: half calibrates, half reports")
    seed: int = Field(0, description="seeds the held-out draw, the initialisation and the negatives")


class ChoiceConfig(_Strict):
    """How a simulated user reacts to a slate (see :mod:`promptrec.simulation.choice`)."""

    examine: float = Field(0.7, gt=0, le=1, description="probability of examining the first slot")
    position_decay: float = Field(
        1.0, ge=0, description="examination at rank r = examine / log2(r + 1) ** position_decay"
    )
    conversion_scale: float = Field(2.0, gt=0, description="P(convert | click) = sigmoid(scale * logit(p) + bias)")
    conversion_bias: float = Field(-1.0, description="see conversion_scale")
    repeat_decay: float = Field(
        0.9, ge=0, le=1, description="click probability x repeat_decay ** (times the item was shown before)"
    )
    similarity_fatigue: float = Field(
        0.15, ge=0, description="click probability x exp(-similarity_fatigue * genre overlap with recent consumption)"
    )
    fatigue_memory: float = Field(0.8, ge=0, lt=1, description="per-round decay of the recent-consumption genre profile")
    satisfaction_memory: float = Field(
        0.9, ge=0, lt=1, description="satisfaction state = memory * state + (1 - memory) * this round's experience"
    )
    leave_baseline: Literal["chance", "absolute"] = Field(
        "chance",
        description="chance: a bad round is satisfaction below leave_threshold x the user's chance level (the "
        "experience a uniformly random slate gives them in expectation; satisfaction also starts there); "
        "absolute: below leave_threshold itself (satisfaction starts at 0.5)",
    )
    leave_threshold: float = Field(
        0.9, ge=0, description="bad-round threshold, relative to the chance level or absolute (leave_baseline); 0: nobody leaves"
    )
    leave_patience: int = Field(5, ge=1, description="consecutive bad rounds after which a user leaves")


class RecommenderEntry(_Strict):
    name: str = Field(
        description="registered recommender (popularity, itemknn, bpr, sasrec, p5, ...) or a reference "
        "policy: oracle (ranks by the ground truth; a ceiling, not a recommender) or random"
    )
    label: str | None = Field(None, description="name in outputs; default: name")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="constructor parameters; for p5, dotted RunConfig overrides (model.preset: tiny, ...)",
    )

    @property
    def key(self) -> str:
        return self.label or self.name


class UpdateEntry(_Strict):
    strategy: Literal["none", "retrain", "finetune"] = Field(
        "none",
        description="none: parameters frozen (users' histories still grow); retrain: fit a fresh model on "
        "the log; finetune: continue training the current model on recent events (warm start)",
    )
    every: int = Field(5, ge=1, description="rounds between updates")
    epochs: int | None = Field(None, ge=1, description="finetune: training epochs (default: the model's)")
    replay: float = Field(
        0.0, ge=0, le=1, description="finetune: share of users whose whole log is replayed instead of recent events"
    )
    context: int = Field(5, ge=0, description="finetune: older events kept before a user's new ones, as prompt context")

    @property
    def key(self) -> str:
        if self.strategy == "none":
            return "none"
        replay = f"-replay{self.replay:g}" if self.strategy == "finetune" and self.replay else ""
        return f"{self.strategy}{self.every}{replay}"


class InterventionEntry(_Strict):
    name: str = Field("none", description="registered intervention: none, epsilon, sample, mmr, calibration")
    params: dict[str, Any] = Field(default_factory=dict, description="its parameters (see simulation.interventions)")

    @property
    def key(self) -> str:
        if not self.params:
            return self.name
        return self.name + "-" + "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in self.params.items())


class SimulationConfig(FileConfig):
    data: DataConfig = Field(default_factory=DataConfig)
    oracle: OracleConfig = Field(default_factory=OracleConfig)
    choice: ChoiceConfig = Field(default_factory=ChoiceConfig)
    recommenders: list[RecommenderEntry] = Field(
        default_factory=lambda: [RecommenderEntry(name="popularity")], min_length=1
    )
    updates: list[UpdateEntry] = Field(default_factory=lambda: [UpdateEntry()], min_length=1)
    interventions: list[InterventionEntry] = Field(default_factory=lambda: [InterventionEntry()], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    rounds: int = Field(50, ge=1)
    slate_size: int = Field(10, ge=1, description="K: items shown per user per round")
    candidates: int = Field(50, ge=1, description="items asked of the recommender per user before the intervention")
    skip_limit: int | None = Field(
        2,
        ge=1,
        description="items shown to a user this many times without a click are not shown to them again "
        "(impression discounting from the platform's own impression log; the recommender still ranks "
        "them, the loop drops them from its candidates); null: never dropped",
    )
    user_share: float = Field(1.0, gt=0, le=1, description="share of active users visiting in a round (seeded draw)")
    eval_k: int = Field(10, ge=1, description="cutoff of the held-out accuracy (HR, NDCG)")
    eval_every: int = Field(1, ge=1, description="rounds between held-out accuracy measurements")
    age_split: int = Field(35, description="MovieLens age groups: < age_split and >= age_split")
    checkpoint_every: int = Field(1, ge=1, description="rounds between checkpoints")

    @model_validator(mode="after")
    def _check(self) -> SimulationConfig:
        if self.candidates < self.slate_size:
            raise ValueError(f"candidates ({self.candidates}) must be >= slate_size ({self.slate_size})")
        keys = [r.key for r in self.recommenders]
        if len(set(keys)) != len(keys):
            raise ValueError(f"recommender labels must be unique, got {keys}")
        for key in keys:
            if not re.fullmatch(r"[\w.+-]+", key):
                raise ValueError(f"recommender label {key!r} must be a plain name (letters, digits, . + - _)")
        return self


__all__ = [
    "ChoiceConfig",
    "InterventionEntry",
    "OracleConfig",
    "RecommenderEntry",
    "SimulationConfig",
    "UpdateEntry",
]
