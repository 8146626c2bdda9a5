"""Typed run configuration. Every key is documented here; unknown keys are rejected.

A config file (YAML or JSON) mirrors :class:`RunConfig`; it is saved next to the weights of every
model, with the package version, so a model directory explains how it was made.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ...backbones.frequency import kept_frequencies
from ...backbones.tuning import TuningConfig
from ...core.config import DataConfig, FileConfig, _Strict


class IndexConfig(_Strict):
    method: str = Field("collaborative", description="item indexer: random, sequential, collaborative")
    params: dict[str, Any] = Field(default_factory=dict, description="indexer parameters (levels, base, clusters, depth, ...)")


class ModelConfig(_Strict):
    backbone: str = Field("t5", description="registered backbone: t5, gpt2, llama, qwen2")
    preset: str = Field("small", description="size preset: tiny, micro, mini, compact, small, base")
    pretrained: str | None = Field(
        None,
        description="what to start from: a local transformers or promptrec model directory, a .gguf file, or a "
        "packaged model (gemma-3-270m; `promptrec models list`)",
    )
    random_weights: bool = Field(
        False, description="model.pretrained's architecture and tokenizer with fresh random weights (the control run)"
    )
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # Off by default: under leave-one-out a user token sees only that user's few training
    # examples, so it stays close to its random init, while 22k of them (Beauty) double the
    # model and slow every step through a 5x larger output layer.
    user_tokens: bool = Field(False, description="one vocabulary token per training user")
    # An item token is a new word to any LM. Started from what the item's text means (sentence
    # embeddings, PCA-reduced to the model width) instead of noise, items described alike start
    # close together, which sparse histories alone teach slowly.
    # A pretrained LM already knows the words of a title: 'lm' starts an item token at the mean
    # of its title's token embeddings, in the LM's own embedding space.
    item_init: Literal["random", "text", "lm"] = Field(
        "random",
        description="item token embeddings: 'random', 'text' (PCA of item_encoder sentence embeddings) or 'lm' "
        "(mean of the pretrained backbone's embeddings of the title's tokens); one-token ids",
    )
    item_encoder: str | None = Field(
        None,
        description="text encoder for item_init=text: a local directory, a .gguf file or a packaged model "
        "(all-minilm-l6-v2, gemma-3-270m; `promptrec models list`); empty = all-minilm-l6-v2",
    )
    max_history: int = Field(20, ge=1, description="most recent items shown in a prompt")
    # BSARec's inductive bias (a low-pass view of the sequence beside attention), causal so that
    # every position of a prompt can still be learned at once; see backbones/frequency.py.
    frequency_filter: float = Field(
        0.0, ge=0.0, le=1.0,
        description="weight alpha of a BSARec-style frequency branch beside each self-attention of a decoder-only "
        "backbone (c model.frequency_cutoff, a max_history window); 0 = none. It filters whole prompts: one "
        "token per item (index levels 1) and one-token ranking only",
    )
    # BSARec's c: the branch keeps the c // 2 + 1 lowest frequencies of its window. Read causally
    # (backbones/frequency.py), c 5 averages about the last ten positions and c 9 about the last five.
    frequency_cutoff: int = Field(
        5, ge=1, description="model.frequency_filter: BSARec's c; the branch keeps the c // 2 + 1 lowest frequencies"
    )
    max_words: int = Field(5000, ge=10, description="word vocabulary size (template + item text)")
    templates: str | None = Field(None, description="template YAML file, or a shipped set by name (p5, history_last); empty = p5")
    # A causal LM trained with train.history_loss learns each history item right after the one
    # before; the target follows </s> instead, a position it learns from one example per user.
    prompt_eos: bool = Field(
        True,
        description="end prompts and answers with </s> (off: the answer continues the prompt as one more item; "
        "equal-length item codes only)",
    )

class TaskConfig(_Strict):
    weights: dict[str, float] = Field(
        default_factory=lambda: {"sequential": 1.0},
        description="task family -> sampling weight: sequential, sequence, yesno, choose, rating",
    )
    train_candidates: int = Field(20, ge=2, description="candidate list size for 'choose' in training")
    # One random window of a long history per epoch trains its early items from a few items of
    # context, while prediction always reads the last max_history; windows ending `stride` items
    # apart let every training position be a target once per epoch, each read after at least
    # max_history - stride items of its history (bench/README.md, "Long histories").
    window_stride: int = Field(
        0, ge=0,
        description="'sequence' family: histories longer than model.max_history become windows ending this many "
        "items apart, each learning only the items the window before it did not (0 = one random window per epoch)",
    )

    @model_validator(mode="after")
    def _check(self) -> "TaskConfig":
        from ...prompts.tasks import TASKS

        for name, w in self.weights.items():
            TASKS.get(name)
            if w < 0:
                raise ValueError(f"task weight for {name!r} must be >= 0")
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("at least one task needs a positive weight")
        return self


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    # A schedule that ends at a fixed epoch fixes the budget in advance: 25 cosine epochs suit
    # Beauty and stop MovieLens far below its best. "plateau" keeps the rate after warm-up and
    # multiplies it by decay_factor whenever validation NDCG@10 has not improved for
    # decay_patience epochs, so validation chooses both when to anneal and (with patience) when
    # to stop; train.epochs is then only a cap.
    schedule: Literal["linear", "cosine", "constant", "plateau"] = "cosine"
    decay_patience: int = Field(2, ge=1, description="schedule=plateau: epochs without validation gain before the rate is cut")
    decay_factor: float = Field(0.3, gt=0, lt=1, description="schedule=plateau: what each cut multiplies the rate by")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 disables")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Decoupled weight decay pulls every weight toward 0; this pulls item embeddings toward the
    # text vectors they started from, so what the text says about an item is not forgotten
    # (least of all for rare items, whose few gradients cannot teach them much).
    item_anchor: float = Field(
        0.0, ge=0, description="model.item_init=text: decay of item embeddings toward their text start, times lr per step (0 = off)"
    )
    # The anchor keeps item rows near a fixed PCA of their text; this learns that map instead
    # (models/p5/item_text.py), so every item's events teach how text becomes an embedding.
    text_projection: bool = Field(
        False,
        description="model.item_init=text: item embeddings = a free row + the item's text vector times a learned map "
        "(started as the PCA); item_anchor then pulls the free rows. Baked into plain weights when saved",
    )
    # A text vector places a brand or a category where the sentence encoder puts its name; a learned
    # vector per attribute learns what it means for what is bought next, from all its items.
    item_attributes: bool = Field(
        False,
        description="train.text_projection: also learn one vector per item category and brand (shared by two or more "
        "items), each item row adding the mean of its own; baked into plain weights when saved",
    )
    # SASRec learns from every position of a sequence in one pass; a causal LM reading a history
    # can too, at no extra forward cost. Only for history-only families (sequential, sequence).
    history_loss: bool = Field(
        False, description="causal LMs: also learn each history item of a next-item prompt from the items before it"
    )
    # Sorting cuts padding (a batch costs its longest prompt) but puts long histories together in
    # a few batches of their own; a window of 1 mixes every batch at random, as SASRec's are. On
    # Beauty and Sports random batches lifted validation and the long histories most, at about
    # 1.6x the time per epoch (bench/README.md).
    length_window: int = Field(
        64, ge=1, description="batches whose prompts are sorted by length together, to cut padding (1 = random batches)"
    )
    # Next-item answers are item tokens; a pretrained LM's output layer also covers 262k words
    # that are never an answer here, at most of the cost of a step.
    softmax: Literal["vocabulary", "items"] = Field(
        "vocabulary",
        description="what the training softmax covers: the whole vocabulary, or the item tokens and </s> only "
        "(tasks whose answers are items: sequential, sequence, choose)",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory for large backbones, ~30% slower"
    )
    patience: int = Field(3, ge=1, description="epochs without validation NDCG@10 gain before stopping")
    val_users: int = Field(2000, ge=0, description="validation users per epoch (0 = all)")
    examples_per_epoch: int | None = Field(None, ge=1, description="default: one pass over training positions")
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    time_limit: float | None = Field(None, gt=0, description="stop training after this many seconds")
    num_workers: int = Field(0, ge=0, description="processes rendering and tokenising batches (0 = in the training process)")
    seed: int = 0

    @model_validator(mode="after")
    def _plateau_can_cut(self) -> TrainConfig:
        if self.schedule == "plateau" and self.patience <= self.decay_patience:
            raise ValueError(
                f"train.schedule=plateau cuts the rate after {self.decay_patience} epochs without gain and stops "
                f"after train.patience={self.patience}: set train.patience above train.decay_patience"
            )
        return self


class EvalConfig(_Strict):
    ks: tuple[int, ...] = (5, 10, 20)
    batch_size: int = Field(64, ge=1)
    template: str | None = Field(None, description="sequential template id for evaluation; empty = first seen")
    sampled_candidates: int = Field(100, ge=2, description="list size for the sampled choose evaluation")
    unconstrained_users: int = Field(500, ge=0, description="users decoded without the trie to measure invalid outputs")
    users: int = Field(0, ge=0, description="evaluate only this many users (0 = all)")
    shots: int = Field(0, ge=0, description="in-context demonstrations from other users' training data")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="inference precision (bf16 autocast)")
    search: Literal["auto", "generate"] = Field(
        "auto",
        description="constrained decoding: 'auto' picks the fastest exact search for the model; 'generate' always "
        "uses transformers' beam search with the trie (a reference for the fast paths)",
    )


ITEM_ANSWER_TASKS = ("sequential", "sequence", "choose")  # families whose answers are item codes


class RunConfig(FileConfig):
    data: DataConfig = Field(default_factory=DataConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    tasks: TaskConfig = Field(default_factory=TaskConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _check_anchor(self) -> "RunConfig":
        if self.train.item_anchor > 0 and self.model.item_init == "random":
            raise ValueError("train.item_anchor pulls item embeddings toward their text start: it needs model.item_init=text or lm")
        if self.train.text_projection and self.model.item_init != "text":
            raise ValueError("train.text_projection learns the map from item text to embedding: it needs model.item_init=text")
        if self.train.item_attributes and not self.train.text_projection:
            raise ValueError(
                "train.item_attributes adds learned attribute vectors to the text map: it needs train.text_projection=true"
            )
        if self.model.random_weights and not self.model.pretrained:
            raise ValueError("model.random_weights=true re-initialises model.pretrained's architecture: set model.pretrained")
        if self.model.item_init == "lm" and not self.model.pretrained:
            raise ValueError("model.item_init=lm reads item titles with a pretrained LM's own embeddings: set model.pretrained")
        m = self.model
        if m.frequency_filter > 0 and kept_frequencies(m.frequency_cutoff) >= m.max_history // 2 + 1:
            # A window of n positions has n // 2 + 1 frequencies: keeping them all is no low-pass at all.
            fix = (f"use at most {2 * (m.max_history // 2) - 1}" if m.max_history > 1
                   else "a window of one item has nothing to filter")
            raise ValueError(f"model.frequency_cutoff {m.frequency_cutoff} keeps every frequency of a "
                             f"model.max_history window of {m.max_history}: {fix}")
        if self.tasks.window_stride:
            if not self.train.history_loss:
                raise ValueError("tasks.window_stride splits long histories into windows that learn their history items: "
                                 "it needs train.history_loss=true")
            if self.tasks.window_stride > self.model.max_history:
                raise ValueError(f"tasks.window_stride ({self.tasks.window_stride}) must be at most model.max_history "
                                 f"({self.model.max_history}), or items between windows would never be targets")
        if self.train.softmax == "items":
            other = sorted(n for n, w in self.tasks.weights.items() if w > 0 and n not in ITEM_ANSWER_TASKS)
            if other:
                raise ValueError(f"train.softmax=items covers item answers only; tasks {other} answer with words")
        return self
