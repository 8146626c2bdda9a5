"""The training loop the language-model recommenders share (:mod:`.p5` and :mod:`.cross_encoder`).

:class:`Trainer` owns what does not depend on the model: accelerate (or plain torch), AdamW with
its parameter groups, the learning-rate schedule, the optimisation step, validation with
best-weights keeping, patience, the time limit, the non-finite loss error, the progress bar, the
metrics log, and checkpoint/resume. What a model family adds goes through :class:`Callback` hooks.
The model supplies its batches and its loss.

Under ``accelerate launch`` with N processes the loop is data-parallel: the batches a process is
given are its slice of each global batch, and its loss is summed over its slice and weighed by
the global batch (the ``weight`` the loss callable returns, summed over the processes), times N,
since the engine averages gradients over the processes; so the step is the one-process step
over the whole batch. The schedule counts global steps. Validation is rank 0's decision for all;
only rank 0 writes the metrics and checkpoint files, while every process saves its part of
accelerate's state (its random generators, an engine's shards).

Under FSDP (an accelerate config file with ``distributed_type: FSDP``) each process holds only a
shard of the weights, which its forward gathers layer by layer, so every process must run the
same forwards; evaluation does not (each process ranks its own users, and a model's decoding
takes as many steps as its users need). The trainer therefore keeps beside the sharded model a
plain copy of the module that holds no weights until it is given the whole ones: gathered from
the shards for each validation (then ranked as in data-parallel runs, and copied as the best
weights), and at the end the best ones. Every process then holds the whole weights (not their
gradients or optimiser state), as it will to recommend. A model whose input embedding and output
layer share parameters that accelerate cannot put in one unit (peft's trainable tokens on a tied
embedding) is refused before it is sharded (:func:`_split_ties`). DeepSpeed ZeRO stage 3 (a
DeepSpeed config file with ``"stage": 3``) partitions the weights as well, gathering each module's
as its forward runs: the same plain copy serves it, given weights gathered by DeepSpeed's
``GatheredParameters``.

An "epoch" is the stretch of steps between two validations: a pass over the data for P5, a
share of the planned steps for the cross-encoder, which validates at evenly spaced steps.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..core import distributed

log = logging.getLogger("promptrec")

SCHEDULES = ("linear", "cosine", "constant", "plateau")


class Callback:
    """Hooks into :meth:`Trainer.fit`; each does nothing unless overridden."""

    def after_optimizer_step(self, trainer: Trainer) -> None:
        """After ``optimizer.step()``, before the scheduler steps: ``trainer.lr`` is still the
        rate of the step just taken."""

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        """After a whole step; ``loss`` is the global batch's loss, ``trainer.state["step"]``
        counts this step."""

    def on_validation(self, trainer: Trainer, metrics: dict[str, Any], improved: bool) -> None:
        """After a validation and the bookkeeping it drives (best weights, patience, plateau cut),
        before the epoch is logged and checkpointed."""

    def on_checkpoint(self, trainer: Trainer, directory: Path) -> None:
        """On the main process only, while a checkpoint is written into ``directory``, before
        accelerate's state: for what the model family keeps beside it."""


@dataclass(frozen=True)
class TrainerConfig:
    """How :class:`Trainer` optimises; the schedule counts ``total_steps`` optimiser steps."""

    lr: float
    total_steps: int
    epochs: int
    weight_decay: float = 0.0
    # Transformer recipes exempt biases and norm weights (1-D) from weight decay; the
    # cross-encoder decays every parameter, as it always has.
    decay_matrices_only: bool = True
    schedule: str = "linear"  # linear, cosine, constant (each after a linear warm-up), plateau
    warmup_ratio: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 disables
    patience: int | None = None  # validations without gain before stopping; None: never
    decay_patience: int = 1  # plateau: validations without gain per cut
    decay_factor: float = 0.5  # plateau: the cut
    time_limit: float | None = None  # training seconds (validation excluded), over resumes
    seed: int = 0
    accelerate: bool = True  # False: plain torch on ``device`` (one process, no checkpoints)
    device: str | torch.device | None = None
    mixed_precision: str = "no"
    monitor: str = "NDCG@10"  # the validation metric that decides; higher is better
    shown: Sequence[str] = ()  # validation metrics printed and logged each epoch
    report: bool = True  # a line per epoch (log and, with progress, stdout)
    progress: bool = True
    desc: str = "epoch"
    nan_hint: str = "lower the learning rate or keep gradient clipping on"


LossFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, float]]


class Trainer:
    """The shared loop (module doc).

    Args:
        model: the module to train; only parameters with ``requires_grad`` are optimised.
        config: a :class:`TrainerConfig`.
        callbacks: :class:`Callback` objects, called in order.
        output_dir: where ``metrics.jsonl`` (and TensorBoard, when installed) go; None: nowhere.
        checkpoint_dir: where a checkpoint is written after each epoch (accelerate only).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainerConfig,
        callbacks: Sequence[Callback] = (),
        output_dir: str | Path | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> None:
        if config.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {config.schedule!r}: one of {', '.join(SCHEDULES)}")
        if checkpoint_dir is not None and not config.accelerate:
            raise ValueError("checkpoints are accelerate's state: they need accelerate=True")
        self.config, self.callbacks = config, list(callbacks)
        self.output_dir = Path(output_dir) if output_dir else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.state: dict[str, Any] = {
            "epoch": -1, "step": 0, "best": -1.0, "best_epoch": -1, "bad_epochs": 0, "train_seconds": 0.0, "lr_scale": 1.0,
        }  # fmt: skip
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped_by_time = False
        self.train_loss = 0.0  # the last epoch's mean step loss
        self.accelerator = None
        self.sharded = False  # FSDP or ZeRO-3: each process holds a shard of the weights (module doc)
        fsdp = False
        if config.accelerate:
            from accelerate import Accelerator
            from accelerate.utils import DataLoaderConfiguration, DistributedType

            # split_batches: each batch is the global one, split between the processes, so the
            # prepared scheduler advances once per step whatever their number.
            distributed.state()  # the launch, as promptrec reads it, before accelerate reads it its own way
            self.accelerator = Accelerator(
                mixed_precision=config.mixed_precision, dataloader_config=DataLoaderConfiguration(split_batches=True)
            )
            distributed.shard_on_cpus(self.accelerator)
            kind = self.accelerator.distributed_type
            fsdp = kind == DistributedType.FSDP
            zero3 = kind == DistributedType.DEEPSPEED and self.accelerator.state.deepspeed_plugin.zero_stage == 3
            self.sharded = fsdp or zero3
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        if config.decay_matrices_only:
            groups = [
                {"params": [p for p in self.trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
                {"params": [p for p in self.trainable if p.ndim < 2], "weight_decay": 0.0},
            ]
        else:
            groups = [{"params": self.trainable, "weight_decay": config.weight_decay}]
        # No empty group: DeepSpeed drops them, and a scheduler built on the groups would then step
        # more rates than its optimiser has (LoRA's trainable parameters are all matrices).
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)
        scheduler = self._scheduler(optimizer)
        if fsdp:
            split = _split_ties(model)
            if split:
                raise ValueError(
                    f"FSDP needs the parameters that the input embedding and the output layer share ({', '.join(split)}) in "
                    "one unit, and accelerate puts the two in one only when they hold the same weight tensor; here each "
                    "computes its own (peft's trainable tokens on a tied embedding: LoRA training the rows of added "
                    "tokens). Set tuning.train_embeddings=false (the added rows keep their start), tune fully, shard with "
                    "DeepSpeed ZeRO-3 (examples/accelerate/zero3.yaml), or train LoRA without FSDP"
                )
            _one_embedding_module(model)
        if self.sharded:
            # Taken before the engine shards the module in place (module doc).
            plain = _without_weights(model)
            self._ties = _tied_names(plain)
        if self.accelerator is not None:
            model, optimizer, scheduler = self.accelerator.prepare(model, optimizer, scheduler)
            self.raw = plain if self.sharded else self.accelerator.unwrap_model(model)
        else:
            self.raw = model
        # ``model`` runs the loss (an engine's wrapper exchanges gradients in its forward);
        # ``raw`` is the module itself, for weights and evaluation (under FSDP, the plain copy).
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        cfg = self.config
        warmup = int(cfg.warmup_ratio * cfg.total_steps)
        if cfg.schedule == "plateau":
            # Built in, not a callback: the cut is decided by the validation the trainer runs,
            # and its running product is trainer state that a checkpoint must carry.
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)) * self.state["lr_scale"]
            )
        from transformers import get_scheduler

        return get_scheduler(
            "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule,
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=max(cfg.total_steps, 1),
        )

    # -- what callbacks and callers read -----------------------------------------------------
    @property
    def device(self) -> torch.device:
        if self.accelerator is not None:
            return self.accelerator.device
        return torch.device(self.config.device or "cpu")

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def processes(self) -> int:
        return 1 if self.accelerator is None else self.accelerator.num_processes

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group, as the scheduler last set it."""
        return self.scheduler.get_last_lr()[0]

    # -- the loop --------------------------------------------------------------------------
    def fit(
        self,
        epoch_batches: Callable[[int], tuple[Iterable[Any], int]],
        loss: LossFn,
        validate: Callable[[], dict[str, Any]] | None = None,
        resume: bool = False,
    ) -> Trainer:
        """Train epochs ``state["epoch"] + 1`` to ``config.epochs - 1``, then load the best weights.

        ``epoch_batches(epoch)``: that epoch's batches and their number. ``loss(model, batch)``:
        ``(summed, weight)``, this process's loss summed over what ``weight`` counts (target
        tokens, examples), the step minimising ``summed`` over the global batch's total weight; a
        loss that is already a mean comes with weight 1. ``validate()``: metrics (rank 0's count),
        ``config.monitor`` among them; None: no validation, the last weights are kept.
        ``resume``: continue from the checkpoint in ``checkpoint_dir``.
        """
        cfg, state = self.config, self.state
        acc, main, processes = self.accelerator, self.is_main, self.processes
        if resume:
            self._load_checkpoint()
        elif processes > 1:
            # The model was built and initialised alike everywhere (and the engine started every
            # process from rank 0's weights); from here each process draws its own dropout. (A
            # resumed run has each process's generators back from the checkpoint.)
            from accelerate.utils import set_seed

            set_seed(cfg.seed, device_specific=True)
        mlog = _MetricsLog(self.output_dir if main else None)
        autocast = acc.autocast if acc is not None else contextlib.nullcontext
        model, optimizer, scheduler = self.model, self.optimizer, self.scheduler
        for epoch in range(state["epoch"] + 1, cfg.epochs):
            batches, count = epoch_batches(epoch)
            model.train()
            epoch_start = time.time()
            running = 0.0
            epoch_loss, epoch_steps = 0.0, 0
            # Redirected output (logs, CI) gets an update every 30 s instead of a flood of bars.
            bar = tqdm(
                batches, total=count, desc=f"{cfg.desc} {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and main),
                leave=False, mininterval=0.1 if sys.stderr.isatty() else 30.0,
            )  # fmt: skip
            for batch in bar:
                with autocast():
                    summed, weight = loss(model, batch)
                # One exchange per step: the batch's weight, its summed loss, and whether rank 0
                # is out of time (clocks differ: its decides for all).
                elapsed = state["train_seconds"] + time.time() - epoch_start
                out_of_time = main and bool(cfg.time_limit) and elapsed > cfg.time_limit
                totals = distributed.all_sum(torch.tensor([float(weight), summed.item(), float(out_of_time)], dtype=torch.float64))
                step_loss = summed * (processes / max(totals[0].item(), 1.0))
                value = totals[1].item() / max(totals[0].item(), 1.0)  # the whole batch's loss
                if not math.isfinite(value):
                    # Left alone, the weights turn to NaN and every later prediction with them.
                    raise FloatingPointError(
                        f"training loss is {value} at step {state['step'] + 1} (epoch {epoch + 1}, lr "
                        f"{self.lr:.2e}, mixed precision {cfg.mixed_precision}): {cfg.nan_hint}"
                    )
                if acc is not None:
                    acc.backward(step_loss)
                    if cfg.grad_clip > 0:
                        acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                else:
                    step_loss.backward()
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
                optimizer.step()
                for cb in self.callbacks:
                    cb.after_optimizer_step(self)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                running = 0.98 * running + 0.02 * value if state["step"] > 1 else value
                epoch_loss, epoch_steps = epoch_loss + value, epoch_steps + 1
                bar.set_postfix(loss=f"{running:.3f}", refresh=False)
                if state["step"] % 50 == 0:
                    mlog.write(state["step"], loss=value, lr=self.lr)
                for cb in self.callbacks:
                    cb.on_step_end(self, value)
                if totals[2].item() > 0:
                    self.stopped_by_time = True
                    break
            bar.close()
            self.train_loss = epoch_loss / max(epoch_steps, 1)
            state["train_seconds"] += time.time() - epoch_start
            state["epoch"] = epoch
            if validate is not None:
                self._validated(epoch, validate, running, epoch_start, mlog)
            if self.stopped_by_time or (cfg.patience is not None and state["bad_epochs"] >= cfg.patience):
                break
        if self.sharded:
            # The copy takes the best weights, or without validation the last ones (gathered).
            self._hold(self.best_state if self.best_state is not None else self._whole_weights())
        elif self.best_state is not None:
            self.raw.load_state_dict(self.best_state)
        self.raw.eval()
        return self

    def _whole_weights(self) -> dict[str, torch.Tensor]:
        """The sharded model's whole weights, on every process (a collective: all must call it)."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:  # ZeRO-3
            import deepspeed

            module = self.accelerator.unwrap_model(self.model)
            with deepspeed.zero.GatheredParameters(list(module.parameters())):  # whole on every process
                return {k: v.detach().clone() for k, v in module.state_dict().items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))

    def _hold(self, weights: dict[str, torch.Tensor]) -> None:
        """Make ``weights`` (whole, not sharded) the plain copy's, on this process's device."""
        # Assigned, not copied: the copy's parameters start without storage.
        self.raw.load_state_dict(weights, assign=True)
        for names in self._ties:  # assigning gives each name its own tensor: tie them again
            shared = self.raw.get_parameter(names[0])
            for name in names[1:]:
                owner, _, attr = name.rpartition(".")
                setattr(self.raw.get_submodule(owner), attr, shared)
        self.raw.to(self.device)

    def _validated(self, epoch: int, validate: Callable[[], dict[str, Any]], running: float, epoch_start: float, mlog: _MetricsLog) -> None:
        cfg, state = self.config, self.state
        if self.sharded:
            self._hold(self._whole_weights())  # every process, before any ranks its users
        val = distributed.broadcast(validate())  # the same on every process; rank 0's decides for all
        score = val[cfg.monitor]
        improved = state["best_epoch"] < 0 or score > state["best"]
        if improved:
            state.update(best=score, best_epoch=epoch, bad_epochs=0)
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.raw.state_dict().items()}
        else:
            state["bad_epochs"] += 1
            if cfg.schedule == "plateau" and state["bad_epochs"] % cfg.decay_patience == 0:
                state["lr_scale"] *= cfg.decay_factor
                for group in self.optimizer.param_groups:  # from the next step on, not one step late
                    group["lr"] *= cfg.decay_factor
        for cb in self.callbacks:
            cb.on_validation(self, val, improved)
        logged = [cfg.monitor, *(k for k in cfg.shown if k != cfg.monitor)]
        mlog.write(
            state["step"], epoch=epoch, **{f"val_{k.replace('@', '')}": val[k] for k in logged}, train_seconds=state["train_seconds"]
        )
        if cfg.report and self.is_main:
            shown = cfg.shown or (cfg.monitor,)
            log.info(
                "epoch %d: loss %.4f, validation %s%s (%.0fs)",
                epoch + 1, running, " ".join(f"{k} {val[k]:.4f}" for k in shown), " *" if improved else "",
                time.time() - epoch_start,
            )  # fmt: skip
            if cfg.progress:
                print(
                    f"{cfg.desc} {epoch + 1}/{cfg.epochs}  loss {running:.4f}  val "
                    + "  ".join(f"{k} {val[k]:.4f}" for k in shown)
                    + f"{'  *' if improved else ''}  ({state['train_seconds']:.0f}s)",
                    flush=True,
                )
        if self.checkpoint_dir is not None:
            self._save_checkpoint(self.best_state if improved else None)

    # -- checkpoints -----------------------------------------------------------------------
    def _load_checkpoint(self) -> None:
        ckpt = self.checkpoint_dir
        if ckpt is None:
            raise ValueError("resume needs a checkpoint_dir")
        self.accelerator.load_state(str(ckpt / "accelerate"))
        self.state.update(json.loads((ckpt / "trainer_state.json").read_text()))
        if self.is_main:
            log.info(
                "resuming after epoch %d (best validation %s %.4f)", self.state["epoch"], self.config.monitor, self.state["best"]
            )
        if (ckpt / "best.safetensors").exists():
            self.best_state = load_file(str(ckpt / "best.safetensors"))

    def _save_checkpoint(self, best_state: dict[str, torch.Tensor] | None) -> None:
        """Called by every process: each saves its part of accelerate's state, rank 0 the rest."""
        acc, ckpt, main = self.accelerator, self.checkpoint_dir, self.is_main
        if main:
            ckpt.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        if main:
            for cb in self.callbacks:
                cb.on_checkpoint(self, ckpt)
        # accelerate warns that tied embeddings are stored once; that is expected for T5. Under
        # FSDP, torch's distributed checkpoint warns that it overwrites the last epoch's.
        acc_log = logging.getLogger("accelerate.utils.other")
        level = acc_log.level
        acc_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected an existing checkpoint", category=UserWarning)
                acc.save_state(str(ckpt / "accelerate"))
        finally:
            acc_log.setLevel(level)
        if not main:
            acc.wait_for_everyone()
            return
        if best_state is not None:
            tmp = ckpt / "best.safetensors.tmp"
            save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp))
            shutil.move(tmp, ckpt / "best.safetensors")
        tmp = ckpt / "trainer_state.json.tmp"
        tmp.write_text(json.dumps(self.state))
        tmp.replace(ckpt / "trainer_state.json")
        # No process goes on (or ends) before the checkpoint is whole: trainer_state.json, written
        # last, is what a resume looks for.
        acc.wait_for_everyone()


def _without_weights(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose parameters have no storage (on the meta device): its structure,
    configuration, buffers and tied parameters, for the whole weights to be assigned to."""
    memo = {
        id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for p in model.parameters()
    }
    return copy.deepcopy(model, memo)


def _split_ties(model: torch.nn.Module) -> list[str]:
    """The parameters that the input embedding shares with the output layer although the two do
    not hold the same ``weight`` tensor (empty when they share none, or are tied plainly).

    FSDP2 refuses a parameter in two units. accelerate carves the input embedding into a unit of
    its own and the output layer into another, unless their ``weight`` is one tensor (a tied
    embedding), when both go into one. peft's trainable tokens on a tied embedding wrap both in
    modules that share the frozen matrix and the new rows, but whose ``weight`` is the matrix with
    the rows merged in, computed on each access: accelerate sees no tie and builds two units
    holding the same parameters."""
    get_input, get_output = (getattr(model, name, None) for name in ("get_input_embeddings", "get_output_embeddings"))
    if get_input is None or get_output is None:
        return []
    inp, out = get_input(), get_output()
    if inp is None or out is None:
        return []
    theirs = {id(p) for p in out.parameters()}
    shared = [name for name, p in inp.named_parameters() if id(p) in theirs]
    weight = getattr(inp, "weight", None)
    if not shared or (weight is not None and weight is getattr(out, "weight", None)):
        return []
    return shared


def _one_embedding_module(model: torch.nn.Module) -> None:
    """Make every embedding layer that holds the input embedding's matrix that layer itself.

    T5 ties one matrix into three embedding layers (``shared``, the encoder's and the decoder's
    ``embed_tokens``). accelerate puts the input embedding (with the output layer, when tied) in
    one FSDP unit, and FSDP2 refuses the same parameter in the root unit through the other two
    layers; one module in three places is managed once. The same weights, the same function.
    """
    get_input = getattr(model, "get_input_embeddings", None)
    inp = get_input() if get_input is not None else None
    weight = getattr(inp, "weight", None)
    if not isinstance(weight, torch.nn.Parameter):
        return
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child is not inp and isinstance(child, torch.nn.Embedding) and child.weight is weight:
                setattr(parent, name, inp)


def _tied_names(model: torch.nn.Module) -> list[list[str]]:
    """The names of each parameter that several modules share (tied embeddings), grouped."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return [group for group in names.values() if len(group) > 1]


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


__all__ = ["SCHEDULES", "Callback", "Trainer", "TrainerConfig"]
