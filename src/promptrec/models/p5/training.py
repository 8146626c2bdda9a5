"""Training of the P5 recommender: the multitask prompt mixture, its batches and token loss,
handed to the shared :class:`~promptrec.models.lm_trainer.Trainer` (AdamW, warm-up + decay,
gradient clipping, early stopping on validation NDCG@10, checkpoint/resume, through accelerate).

Under ``accelerate launch`` with N processes the loop is data-parallel and trains the same
recipe as one process: ``train.batch_size`` is the global batch. Every process draws the same
epoch plan and batches (seeded alike) and renders only its contiguous slice of each batch; its
loss is its slice's summed token loss, which the trainer weighs by the whole batch's target
tokens, so the step is the one-process step over the whole batch. Validation is sharded
(:func:`~promptrec.evaluation.ranking.evaluate_rankings`) and rank 0's result decides early
stopping for all; only rank 0 writes the model beside the trainer's checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from ...backbones.tuning import is_peft, unwrap
from ...core import distributed
from ...data.split import group_sequences
from ...prompts.tasks import TASKS, length_batches, mixture_plan
from ..lm_trainer import Callback, Trainer, TrainerConfig
from .item_text import add_text_projection, bake
from .lm import lm_kind

if TYPE_CHECKING:
    from ...data import Split
    from .model import P5Recommender


def _ratings_by_user(split: Split, users: list[str]) -> list[list[float]] | None:
    if not split.data.has_ratings:
        return None
    by_user = group_sequences(split.train, "rating")
    return [by_user[u] for u in users]


def train(
    rec: P5Recommender,
    split: Split,
    output_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    warm_start: bool = False,
) -> P5Recommender:
    """Train ``rec`` on ``split``: from scratch (index, tokenizer and LM built on the training
    split), from the checkpoint in ``output_dir`` (``resume``), or, with ``warm_start``, from the
    LM, index and tokenizer ``rec`` already has (fine-tuning on new sequences)."""
    cfg = rec.config.train
    out = Path(output_dir) if output_dir else None
    ckpt = out / "checkpoint" if out else None
    set_seed(cfg.seed)
    t0 = time.time()

    resuming = bool(resume and ckpt and (ckpt / "trainer_state.json").exists())
    if resuming:
        # The index, tokenizer and LM shape come from the checkpoint, so a resumed run continues
        # exactly the run that wrote it.
        saved = type(rec).from_pretrained(ckpt / "model")
        rec.indexer, rec.tokenizer, rec.model = saved.indexer, saved.tokenizer, saved.model
        rec.items, rec.user_tokens = saved.items, saved.user_tokens
        rec.train_history = split.train_sequences()
        rec.valid_item = dict(zip(split.valid["user_id"], split.valid["item_id"]))
        rec._build_trie()
    elif warm_start:
        if rec.model is None:
            raise ValueError("warm_start needs a built or loaded model")
        rec.train_history = split.train_sequences()
        rec.valid_item = dict(zip(split.valid["user_id"], split.valid["item_id"]))
    else:
        rec.build(split, progress=progress)
    if distributed.world_size() > 1:
        # Every process built (or read) the index itself; one whose fit were not deterministic
        # would train other codes than its peers, silently.
        codes = hashlib.sha256(json.dumps(sorted(rec.indexer.codes.items())).encode()).hexdigest()
        if distributed.broadcast(codes) != codes:
            raise RuntimeError(
                f"process {distributed.rank()} built another item index than process 0: the index fit is not deterministic"
            )

    if resuming:
        # What the run started from, which the checkpoint's plain model no longer shows: the
        # items' text start (the anchor's target) and, with the text map, the text vectors and
        # the map's start.
        if (ckpt / "item_start.safetensors").exists():
            saved_start = load_file(str(ckpt / "item_start.safetensors"))
            rec.item_start = (saved_start["rows"], saved_start["start"])
        if cfg.text_projection:
            if not (ckpt / "item_text.safetensors").exists():
                raise ValueError(
                    f"{ckpt} has no item_text.safetensors (the text vectors train.text_projection resumes from): "
                    "train the run again"
                )
            saved_text = load_file(str(ckpt / "item_text.safetensors"))
            rec.item_text = (saved_text["text"], saved_text["projection"])
            if cfg.item_attributes:
                if "attributes" not in saved_text:
                    raise ValueError(f"{ckpt} was trained without train.item_attributes: train the run again")
                rec.item_attributes = saved_text["attributes"]
    if cfg.item_anchor > 0 and rec.item_start is None:
        raise ValueError("train.item_anchor needs the item tokens this run started from text (model.item_init=text, built here)")

    model = rec.model
    anchor_start = rec.item_start[1] if rec.item_start is not None else None
    if cfg.text_projection:
        if rec.item_text is None or rec.item_start is None:
            raise ValueError("train.text_projection needs the item tokens this run started from text (model.item_init=text, built here)")
        if is_peft(rec.config.model.tuning):
            raise ValueError("train.text_projection trains the embedding matrix: it needs model.tuning.method=full")
        add_text_projection(unwrap(model), rec.item_start[0], *rec.item_text, attributes=rec.item_attributes)
        # The anchor pulls the free rows toward where they started: the text start less its text
        # part. Computed from the start, not read off the model, so a resumed run (whose free rows
        # the checkpoint then overwrites) pulls toward the same rows as the run it continues.
        text, projection = rec.item_text
        anchor_start = anchor_start - text @ projection
    users = list(rec.train_history)
    ctx = rec.context(rec.train_history, ratings=_ratings_by_user(split, users))
    weights = {k: v for k, v in rec.config.tasks.weights.items() if v > 0}
    families = {name: TASKS.get(name)(ctx) for name in weights}
    if cfg.history_loss and not rec.causal:
        raise ValueError(
            "train.history_loss needs a causal backbone (gpt2, llama, qwen2): an encoder-decoder "
            "reads the whole history at once, so its history items cannot be targets"
        )
    base = families["sequential"].size() if "sequential" in families else max(f.size() for f in families.values())
    per_epoch = cfg.examples_per_epoch or base
    steps_per_epoch = math.ceil(per_epoch / cfg.batch_size)
    total_steps = max(1, steps_per_epoch * cfg.epochs)

    if cfg.gradient_checkpointing:
        unwrap(model).activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    trainer = Trainer(
        model,
        TrainerConfig(
            lr=cfg.lr, total_steps=total_steps, epochs=cfg.epochs, weight_decay=cfg.weight_decay,
            schedule=cfg.schedule, warmup_ratio=cfg.warmup_ratio, grad_clip=cfg.grad_clip, patience=cfg.patience,
            decay_patience=cfg.decay_patience, decay_factor=cfg.decay_factor, time_limit=cfg.time_limit,
            seed=cfg.seed, mixed_precision=cfg.mixed_precision, monitor="NDCG@10", shown=("HR@10", "NDCG@10"),
            progress=progress, nan_hint="lower train.lr, keep train.grad_clip on, or train without mixed precision",
        ),
        [_SaveModel(rec)],
        output_dir=out,
        checkpoint_dir=ckpt,
    )  # fmt: skip
    raw = trainer.raw
    kind = lm_kind(raw)  # the loss of an encoder-decoder or a decoder-only LM
    # The recommender holds the module itself (batches, validation, saving; under FSDP the
    # trainer's plain copy, given the whole weights for validation); only the loss runs through
    # the engine's wrapper, whose forward exchanges gradients.
    rec.model = raw
    if cfg.text_projection and trainer.sharded:
        raise ValueError(
            "train.text_projection computes the embedding matrix from the whole text map on every read, which FSDP or "
            "ZeRO-3 splits between the processes: set train.text_projection=false, or train without sharding the weights"
        )
    if cfg.item_anchor > 0:
        if trainer.sharded:
            raise ValueError(
                "train.item_anchor pulls rows of the embedding matrix in place, which FSDP or ZeRO-3 splits "
                "between the processes: set train.item_anchor=0, or train without sharding the weights"
            )
        embedding = raw.get_input_embeddings()
        weight = embedding.parametrizations.weight.original if cfg.text_projection else embedding.weight
        if not weight.requires_grad:
            raise ValueError(
                "train.item_anchor pulls the trained item embeddings toward their start; here the embedding "
                "matrix is frozen (LoRA trains the new tokens as adapter rows): set train.item_anchor=0"
            )
        rows = rec.item_start[0]
        # Resolved here, once the engine has placed the embedding matrix.
        trainer.callbacks.append(_ItemAnchor(weight, rows.to(weight.device), anchor_start.to(weight), cfg.item_anchor))
    # Summed, not averaged: a step divides by the target tokens of the whole global batch.
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=cfg.label_smoothing, reduction="sum")
    vocabulary = rec.item_vocabulary().to(trainer.device) if cfg.softmax == "items" else None
    templates = {name: rec.templates.family(f.template_family or name, seen=True) for name, f in families.items()}

    def collate(batch: list[tuple[int, str, int]]) -> dict[str, torch.Tensor]:
        inputs, targets, dense, first = [], [], [], []
        for ex_seed, fam, i in batch:
            rng = np.random.default_rng(ex_seed)
            fields = families[fam].example(i, rng)
            tmpl = templates[fam][int(rng.integers(len(templates[fam])))]
            src, tgt = tmpl.render(fields)
            inputs.append(src)
            targets.append(tgt)
            dense.append(cfg.history_loss and families[fam].history_only)
            first.append(families[fam].first_target(i))
        return rec.training_batch(inputs, targets, history=dense if any(dense) else None,
                                  history_from=first if any(first) else None)

    def epoch_batches(epoch: int) -> tuple[Iterable[tuple[bool, dict[str, torch.Tensor]]], int]:
        rng = np.random.default_rng([cfg.seed, epoch])
        plan = mixture_plan(families, weights, per_epoch, rng)
        seeds = rng.integers(0, 2**63 - 1, size=len(plan))
        examples = [(int(s), f, i) for s, (f, i) in zip(seeds, plan)]
        batches = length_batches(plan, families, cfg.batch_size, rng, window=cfg.length_window)
        # This process's slice of every global batch; a slice left empty (a last batch smaller
        # than N) takes the batch's first example at weight 0, as every process must take part
        # in each step's gradient exchange.
        slices = [[b[i] for i in distributed.shard(len(b))] or b[:1] for b in batches]
        has_examples = [len(distributed.shard(len(b))) > 0 for b in batches]
        # On a GPU, rendering and tokenising prompts in the training process can be the bottleneck.
        loader = DataLoader(examples, batch_sampler=slices, collate_fn=collate, num_workers=cfg.num_workers)
        return _Slices(has_examples, loader), len(batches)

    def step_loss(model: torch.nn.Module, item: tuple[bool, dict[str, torch.Tensor]]) -> tuple[torch.Tensor, float]:
        mine, batch = item
        batch = {k: v.to(trainer.device) for k, v in batch.items()}
        targets = batch.pop("targets")
        summed = kind.loss(model, batch, targets, loss_fn, vocabulary)
        if not mine:
            return summed * 0.0, 0.0
        return summed, float((targets != -100).sum())

    val_users = list(split.valid["user_id"])
    if cfg.val_users and len(val_users) > cfg.val_users:
        val_users = list(np.random.default_rng(cfg.seed).choice(val_users, cfg.val_users, replace=False))

    def validate() -> dict[str, float]:
        return rec.evaluate_users(split, val_users, stage="valid") if val_users else {"NDCG@10": 0.0, "HR@10": 0.0}

    trainer.fit(epoch_batches, step_loss, validate, resume=resuming)
    if cfg.text_projection:
        bake(raw)  # from here on a plain model: evaluation, saving and serving need no text vectors
    state = trainer.state
    rec.fit_info_ = {
        "train_seconds": round(state["train_seconds"], 2),
        "epochs_run": state["epoch"] + 1,
        "best_epoch": state["best_epoch"] + 1,
        "best_valid_NDCG@10": state["best"],
        "steps": state["step"],
        "train_loss": trainer.train_loss,
        "stopped_by_time_limit": trainer.stopped_by_time,
        "final_lr_scale": state["lr_scale"],
        "wall_seconds": round(time.time() - t0, 2),
        "device": str(trainer.device),
        "processes": trainer.processes,
        **rec.parameter_counts(),
    }
    return rec


class _Slices:
    """An epoch's (has examples, batch) pairs, opened anew on each iteration, as the loader is:
    each opening draws the loader's base seed from torch's generator (the progress bar opens it
    once to probe it, then again to iterate), so the dropout that follows depends on it."""

    def __init__(self, has_examples: list[bool], loader: DataLoader) -> None:
        self.has_examples, self.loader = has_examples, loader

    def __iter__(self) -> Iterator[tuple[bool, dict[str, torch.Tensor]]]:
        return zip(self.has_examples, self.loader)


class _ItemAnchor(Callback):
    """Pulls the item token embeddings ``strength`` times the learning rate of the way back to
    their start after each optimizer step (decoupled, like AdamW's weight decay, so the pull does
    not depend on the gradients' scale)."""

    def __init__(self, weight: torch.Tensor, rows: torch.Tensor, start: torch.Tensor, strength: float) -> None:
        self.weight, self.rows, self.start, self.strength = weight, rows, start, strength

    def after_optimizer_step(self, trainer: Trainer) -> None:
        rate = min(self.strength * trainer.lr, 1.0)  # never past the start
        with torch.no_grad():
            self.weight[self.rows] = torch.lerp(self.weight[self.rows], self.start, rate)


class _SaveModel(Callback):
    """The model (index, tokenizer, LM as built) beside the trainer's checkpoint, written once:
    a resumed run rebuilds the recommender from it, then loads the trained weights."""

    def __init__(self, rec: P5Recommender) -> None:
        self.rec = rec

    def on_checkpoint(self, trainer: Trainer, directory: Path) -> None:
        rec = self.rec
        if (directory / "model").exists():
            return
        rec.save_pretrained(directory / "model")
        cfg = rec.config.train
        # A resumed run pulls toward the same start, and learns the same text map
        if rec.item_start is not None and (cfg.item_anchor > 0 or cfg.text_projection):
            start = {"rows": rec.item_start[0], "start": rec.item_start[1].contiguous()}
            save_file(start, str(directory / "item_start.safetensors"))
        if rec.item_text is not None and cfg.text_projection:
            text, projection = rec.item_text
            saved_text = {"text": text.contiguous(), "projection": projection.contiguous()}
            if rec.item_attributes is not None:
                saved_text["attributes"] = rec.item_attributes.contiguous()
            save_file(saved_text, str(directory / "item_text.safetensors"))
