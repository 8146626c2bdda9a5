"""Training loop for the P5 recommender: multitask prompt mixture, AdamW, warm-up + decay,
gradient clipping, early stopping on validation NDCG@10,
checkpoint/resume, through accelerate.

Under ``accelerate launch`` with N processes the loop is data-parallel and trains the same
recipe as one process: ``train.batch_size`` is the global batch. Every process draws the same
epoch plan and batches (seeded alike) and renders only its contiguous slice of each batch; its
loss is its slice's summed token loss over the whole batch's target tokens (times N, since the
engine, DDP, FSDP or DeepSpeed, averages gradients over processes), so the step is the
one-process step over the whole batch. The schedule counts global steps. Validation is sharded
(:func:`~promptrec.evaluation.ranking.evaluate_rankings`) and rank 0's result decides early
stopping for all; only rank 0 writes the model, metrics and checkpoint files, while every
process saves its part of accelerate's state (its random generators, an engine's shards).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from ...backbones.tuning import unwrap
from ...core import distributed
from ...data.split import group_sequences
from ...prompts.tasks import TASKS, length_batches, mixture_plan
from .lm import lm_kind

if TYPE_CHECKING:
    from ...data import Split
    from .model import P5Recommender

log = logging.getLogger("promptrec")


class _MetricsLog:
    """JSONL metrics file, mirrored to TensorBoard when it is installed."""

    def __init__(self, directory: Path | None) -> None:
        self.path = directory / "metrics.jsonl" if directory else None
        self.tb = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(directory / "tensorboard"))
            except Exception:  # tensorboard is an optional extra
                self.tb = None

    def write(self, step: int, **values: float) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)


def _ratings_by_user(split: "Split", users: list[str]) -> list[list[float]] | None:
    if not split.data.has_ratings:
        return None
    by_user = group_sequences(split.train, "rating")
    return [by_user[u] for u in users]


def train(
    rec: "P5Recommender",
    split: "Split",
    output_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    warm_start: bool = False,
) -> "P5Recommender":
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

    if cfg.item_anchor > 0:
        if resuming:
            saved_start = load_file(str(ckpt / "item_start.safetensors"))
            rec.item_start = (saved_start["rows"], saved_start["start"])
        if rec.item_start is None:
            raise ValueError("train.item_anchor needs the item tokens this run started from text (model.item_init=text, built here)")

    model = rec.model
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
    # split_batches: each batch is the global one, split between the processes, so the prepared
    # scheduler advances once per step whatever their number.
    distributed.state()  # the launch, as promptrec reads it, before accelerate reads it its own way
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, dataloader_config=DataLoaderConfiguration(split_batches=True)
    )
    main, processes = accelerator.is_main_process, accelerator.num_processes
    # Only what the tuning method leaves trainable (everything, for full fine-tuning).
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    warmup = int(cfg.warmup_ratio * total_steps)
    lr_scale = [1.0]  # schedule=plateau: the product of the cuts so far, set after each validation
    if cfg.schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)) * lr_scale[0]
        )
    else:
        scheduler = get_scheduler(
            "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule,
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=total_steps,
        )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw = accelerator.unwrap_model(model)  # the module itself, for weights and evaluation
    kind = lm_kind(raw)  # the loss of an encoder-decoder or a decoder-only LM
    # The recommender holds the module itself (batches, validation, saving); only the loss runs
    # through the engine's wrapper, whose forward exchanges gradients.
    rec.model = raw
    anchor = None  # (embedding weight, item rows, their start): resolved once here, not on every step
    if cfg.item_anchor > 0:
        weight = raw.get_input_embeddings().weight
        if not weight.requires_grad:
            raise ValueError(
                "train.item_anchor pulls the trained item embeddings toward their start; here the embedding "
                "matrix is frozen (LoRA trains the new tokens as adapter rows): set train.item_anchor=0"
            )
        rows, start = rec.item_start
        anchor = (weight, rows.to(weight.device), start.to(weight))
    # Summed, not averaged: a step divides by the target tokens of the whole global batch.
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=cfg.label_smoothing, reduction="sum")
    vocabulary = rec.item_vocabulary().to(accelerator.device) if cfg.softmax == "items" else None

    state = {"epoch": -1, "step": 0, "best": -1.0, "best_epoch": -1, "bad_epochs": 0, "train_seconds": 0.0, "lr_scale": 1.0}
    if resuming:
        accelerator.load_state(str(ckpt / "accelerate"))
        state = {**state, **json.loads((ckpt / "trainer_state.json").read_text())}
        lr_scale[0] = state["lr_scale"]
        if main:
            log.info("resuming after epoch %d (best validation NDCG@10 %.4f)", state["epoch"], state["best"])
    if processes > 1 and not resuming:
        # The LM was built and initialised alike everywhere (and the engine started every process
        # from rank 0's weights); from here each process draws its own dropout. (A resumed run
        # has each process's generators back from the checkpoint.)
        set_seed(cfg.seed, device_specific=True)
    best_state = None
    if resuming and (ckpt / "best.safetensors").exists():
        best_state = load_file(str(ckpt / "best.safetensors"))

    templates = {name: rec.templates.family(f.template_family or name, seen=True) for name, f in families.items()}

    def collate(batch: list[tuple[int, str, int]]) -> dict[str, torch.Tensor]:
        inputs, targets, dense = [], [], []
        for ex_seed, fam, i in batch:
            rng = np.random.default_rng(ex_seed)
            fields = families[fam].example(i, rng)
            tmpl = templates[fam][int(rng.integers(len(templates[fam])))]
            src, tgt = tmpl.render(fields)
            inputs.append(src)
            targets.append(tgt)
            dense.append(cfg.history_loss and families[fam].history_only)
        return rec.training_batch(inputs, targets, history=dense if any(dense) else None)

    val_users = list(split.valid["user_id"])
    if cfg.val_users and len(val_users) > cfg.val_users:
        val_users = list(np.random.default_rng(cfg.seed).choice(val_users, cfg.val_users, replace=False))
    mlog = _MetricsLog(out if accelerator.is_main_process else None)
    stopped_early = False
    epoch_loss, epoch_steps = 0.0, 0
    for epoch in range(state["epoch"] + 1, cfg.epochs):
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
        model.train()
        epoch_start = time.time()
        running = 0.0
        epoch_loss, epoch_steps = 0.0, 0  # the epoch's mean of whole-batch losses, for fit_info
        # Redirected output (logs, CI) gets an update every 30 s instead of a flood of bars.
        bar = tqdm(
            loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and main), leave=False,
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )
        for mine, batch in zip(has_examples, bar):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            targets = batch.pop("targets")
            with accelerator.autocast():
                summed = kind.loss(model, batch, targets, loss_fn, vocabulary)
            if not mine:
                summed = summed * 0.0
            # One exchange per step: the batch's target tokens, its summed loss, and whether rank
            # 0 is out of time (clocks differ: its decides for all).
            elapsed = state["train_seconds"] + time.time() - epoch_start
            out_of_time = main and bool(cfg.time_limit) and elapsed > cfg.time_limit
            tokens = float((targets != -100).sum()) if mine else 0.0
            totals = distributed.all_sum(torch.tensor([tokens, summed.item(), float(out_of_time)], dtype=torch.float64))
            loss = summed * (processes / max(totals[0].item(), 1.0))
            value = totals[1].item() / max(totals[0].item(), 1.0)  # the whole batch's mean token loss
            if not math.isfinite(value):
                # Left alone, the weights turn to NaN and every later ranking comes back empty.
                raise FloatingPointError(
                    f"training loss is {value} at step {state['step'] + 1} (epoch {epoch + 1}, lr "
                    f"{scheduler.get_last_lr()[0]:.2e}, mixed precision {cfg.mixed_precision}): lower "
                    "train.lr, keep train.grad_clip on, or train without mixed precision"
                )
            accelerator.backward(loss)
            if cfg.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if anchor is not None:
                _pull_items(*anchor, rate=cfg.item_anchor * scheduler.get_last_lr()[0])
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            running = 0.98 * running + 0.02 * value if state["step"] > 1 else value
            epoch_loss, epoch_steps = epoch_loss + value, epoch_steps + 1
            bar.set_postfix(loss=f"{running:.3f}", refresh=False)
            if state["step"] % 50 == 0:
                mlog.write(state["step"], loss=value, lr=scheduler.get_last_lr()[0])
            if totals[2].item() > 0:
                stopped_early = True
                break
        state["train_seconds"] += time.time() - epoch_start
        val = rec.evaluate_users(split, val_users, stage="valid") if val_users else {"NDCG@10": 0.0, "HR@10": 0.0}
        val = distributed.broadcast(val)  # the same on every process; rank 0's decides for all
        state["epoch"] = epoch
        improved = val["NDCG@10"] > state["best"]
        if improved:
            state.update(best=val["NDCG@10"], best_epoch=epoch, bad_epochs=0)
            best_state = {k: v.detach().cpu().clone() for k, v in raw.state_dict().items()}
        else:
            state["bad_epochs"] += 1
            if cfg.schedule == "plateau" and state["bad_epochs"] % cfg.decay_patience == 0:
                state["lr_scale"] *= cfg.decay_factor
                lr_scale[0] = state["lr_scale"]
                for group in optimizer.param_groups:  # from the next step on, not one step late
                    group["lr"] *= cfg.decay_factor
        mlog.write(state["step"], epoch=epoch, val_NDCG10=val["NDCG@10"], val_HR10=val["HR@10"], train_seconds=state["train_seconds"])
        if main:
            log.info(
                "epoch %d: loss %.4f, validation HR@10 %.4f NDCG@10 %.4f%s (%.0fs)",
                epoch + 1, running, val["HR@10"], val["NDCG@10"], " *" if improved else "", time.time() - epoch_start,
            )
        if progress and main:
            print(
                f"epoch {epoch + 1}/{cfg.epochs}  loss {running:.4f}  val HR@10 {val['HR@10']:.4f}  "
                f"NDCG@10 {val['NDCG@10']:.4f}{'  *' if improved else ''}  ({state['train_seconds']:.0f}s)",
                flush=True,
            )
        if ckpt is not None:
            _save_checkpoint(rec, accelerator, ckpt, state, best_state if improved else None)
        if stopped_early or state["bad_epochs"] >= cfg.patience:
            break

    if best_state is not None:
        rec.model.load_state_dict(best_state)
    rec.model.eval()
    rec.fit_info_ = {
        "train_seconds": round(state["train_seconds"], 2),
        "epochs_run": state["epoch"] + 1,
        "best_epoch": state["best_epoch"] + 1,
        "best_valid_NDCG@10": state["best"],
        "steps": state["step"],
        "train_loss": epoch_loss / max(epoch_steps, 1),
        "stopped_by_time_limit": stopped_early,
        "final_lr_scale": state["lr_scale"],
        "wall_seconds": round(time.time() - t0, 2),
        "device": str(accelerator.device),
        "processes": processes,
        **rec.parameter_counts(),
    }
    return rec


def _pull_items(weight: torch.Tensor, rows: torch.Tensor, start: torch.Tensor, rate: float) -> None:
    """Move the item token embeddings ``rate`` of the way back to their start (decoupled, like
    AdamW's weight decay, so the pull does not depend on the gradients' scale)."""
    with torch.no_grad():
        weight[rows] = torch.lerp(weight[rows], start, min(rate, 1.0))  # never past the start


def _save_checkpoint(rec, accelerator: Accelerator, ckpt: Path, state: dict, best_state: dict | None) -> None:
    """Called by every process: each saves its part of accelerate's state, rank 0 the rest."""
    main = accelerator.is_main_process
    if main:
        ckpt.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    if main and not (ckpt / "model").exists():
        rec.save_pretrained(ckpt / "model")
        if rec.item_start is not None and rec.config.train.item_anchor > 0:  # a resumed run pulls toward the same start
            save_file({"rows": rec.item_start[0], "start": rec.item_start[1].contiguous()}, str(ckpt / "item_start.safetensors"))
    # accelerate warns that tied embeddings are stored once; that is expected for T5.
    acc_log = logging.getLogger("accelerate.utils.other")
    level = acc_log.level
    acc_log.setLevel(logging.ERROR)
    try:
        accelerator.save_state(str(ckpt / "accelerate"))
    finally:
        acc_log.setLevel(level)
    if not main:
        accelerator.wait_for_everyone()
        return
    if best_state is not None:
        tmp = ckpt / "best.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp))
        shutil.move(tmp, ckpt / "best.safetensors")
    tmp = ckpt / "trainer_state.json.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(ckpt / "trainer_state.json")
    # No process goes on (or ends) before the checkpoint is whole: trainer_state.json, written
    # last, is what a resume looks for.
    accelerator.wait_for_everyone()
