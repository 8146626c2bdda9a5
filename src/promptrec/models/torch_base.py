"""What the torch baselines (BPR, SASRec, biased MF) share around their networks.

:class:`TorchRecommender` is a :class:`~promptrec.core.recommender.ScoringRecommender` whose scores
come from a torch network ``net_``. It holds the plumbing only: the device, seeded fitting that
leaves the caller's random state alone, the epoch loop with early stopping on a validation score
(best weights kept), NDCG@10 on validation users, and saving to / restoring from a directory
(JSON + safetensors: no pickle to execute on load). The network, its loss, the sampling and
``_scores`` stay in each model's module.

Launched as N processes (``accelerate launch``, see :mod:`promptrec.core.distributed`), the
same loop trains data-parallel: every process holds the whole network and the whole training
set, walks the same permutation, and computes each global batch of ``batch_size`` examples on
its own slice of it; the gradients are summed across processes and divided by the batch's
number of examples (or targets), which is the gradient of the one-process batch. ``batch_size``
is thus the global batch and the learning rate means the same for any N. Validation by ranking
is sharded like any evaluation (biased MF's RMSE is computed by every process alike), rank 0's
score decides early stopping for all, and only rank 0 shows progress and logs. Through
``fit_with_checkpoints`` (``promptrec train -o OUT``, ``--resume``) the loop writes a checkpoint
after every epoch and continues from it (:mod:`.torch_checkpoint`).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..core import distributed
from ..core.recommender import STAGES, ScoringRecommender
from ..data.split import Split
from ..evaluation.ranking import evaluate_rankings
from .torch_checkpoint import Checkpoint, LoopState

log = logging.getLogger("promptrec")


@dataclass(frozen=True)
class Training:
    """What :meth:`TorchRecommender._train_epochs` did."""

    metric: str  # the validation score's name, e.g. "NDCG@10"
    epochs_run: int
    best_epoch: int  # the epoch whose weights were kept (the last one when none was validated)
    best: float | None  # its validation score; None when no epoch was validated
    train_seconds: list[float]  # per epoch, validation excluded
    stopped_by: str = "epochs"  # "epochs", "patience" or "time_limit"
    processes: int = 1  # data-parallel processes that trained it
    loss: float | None = None  # the last epoch's mean training loss

    def fit_info(self) -> dict[str, Any]:
        return {
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            f"best_valid_{self.metric}": self.best,
            "stopped_by": self.stopped_by,
            "processes": self.processes,
            "train_loss": self.loss,
            # every epoch's, a resumed fit's included (validation excluded)
            "train_seconds_total": round(sum(self.train_seconds), 2),
        }


class TorchRecommender(ScoringRecommender):
    """A :class:`ScoringRecommender` scored by a torch network ``net_`` (module doc).

    Subclasses pass the parameters they all take to ``__init__``, store the rest under the
    parameters' names (``get_params`` reads them back) and implement ``_new_net``. Their ``fit``
    sets ``items_``, ``histories_`` and the index as any scoring model, then builds and trains
    ``net_`` inside ``_seeded`` through ``_train_epochs`` and sets ``fit_info_``. Fitted state
    beyond ``items_``, ``histories_``, ``fit_info_`` and the weights goes through
    ``_extra_state`` and ``_restore_extra``.

    A saved directory holds the config file, ``<name>.safetensors`` (the network's state dict
    plus the extra tensors) and ``<name>.json`` (items, histories plus the extra state); the fit info
    is in the config file, as for every recommender.
    """

    net_: nn.Module
    fit_info_: dict[str, Any]

    def __init__(
        self,
        *,
        lr: float,
        batch_size: int,
        epochs: int,
        patience: int,
        seed: int,
        device: str,
        progress: bool,
    ) -> None:
        """Check and store the parameters every torch baseline takes (the subclass: the rest).

        Args as in the subclasses: Adam's ``lr``, ``batch_size``, at most ``epochs`` epochs,
        early stopping after ``patience`` validations without improvement, ``seed``, the torch
        ``device`` (``"auto"``: CUDA when available) and a tqdm bar when ``progress``.
        """
        check_positive_ints(batch_size=batch_size, epochs=epochs, patience=patience)
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.lr = float(lr)
        self.batch_size = batch_size
        self.epochs = epochs
        self.patience = patience
        self.seed = seed
        self.device = device
        self.progress = progress

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters in signature order, each stored under its own name."""
        return {key: getattr(self, key) for key in inspect.signature(type(self)).parameters}

    @abstractmethod
    def _new_net(self) -> nn.Module:
        """A freshly initialised network sized for the fitted catalogue (and users)."""

    def _extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """JSON-able state and tensors that ``save_pretrained`` writes besides its own."""
        return {}, {}

    def _restore_extra(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``_extra_state`` gave, *popping* its tensors from ``tensors``.

        Runs before ``_new_net``; what it leaves in ``tensors`` is the network's state dict.
        """

    def _torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @contextmanager
    def _seeded(self) -> Iterator[torch.device]:
        """Yield the device with torch's global generators seeded by ``seed``.

        Initialisation (and, per model, shuffling, dropout and negatives) draws from those
        generators; they are forked, so seeding here leaves the caller's random state untouched.
        """
        device = self._torch_device()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            yield device

    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise RuntimeError(
                f"{type(self).__name__} is not fitted: call fit(split) or from_pretrained(dir)"
            )

    # -- training ------------------------------------------------------------------------------
    def _minibatch_epoch(
        self,
        n_examples: int,
        batch_loss: Callable[[torch.Tensor], tuple[torch.Tensor, int]],
        optimiser: torch.optim.Optimizer,
        order: torch.Tensor | np.ndarray | None = None,
    ) -> float:
        """One pass over ``n_examples`` in global batches of ``batch_size``; returns the mean loss.

        ``batch_loss(indices)`` gives the mean loss of those examples and the number of terms the
        mean is over (examples, or target positions). ``order`` is the pass's permutation; it
        must be the same on every process (drawn from a generator seeded alike everywhere).
        Without it one is drawn from a generator of its own, which dropout and negative sampling
        do not advance, so the processes never drift apart. With several processes each takes a
        contiguous slice of every global batch (module doc).
        """
        net = self.net_
        if order is None:
            order = torch.randperm(n_examples, generator=self._order_rng)
        order = torch.as_tensor(order)
        processes = distributed.world_size()
        total, terms = 0.0, 0
        for batch in order.split(self.batch_size):
            optimiser.zero_grad(set_to_none=True)
            if processes == 1:
                loss, n = batch_loss(batch)
                loss.backward()
                total, terms = total + loss.item() * n, terms + n
            else:
                mine = batch[distributed.shard(len(batch))]
                # A process whose slice is empty (a last batch smaller than N) adds nothing.
                loss, n = batch_loss(mine) if len(mine) else (None, 0)
                if loss is not None:
                    # Summed over this slice's terms here, divided by the whole batch's below.
                    (loss * n).backward()
                local = 0.0 if loss is None else loss.item() * n
                sums = distributed.all_sum(torch.tensor([float(n), local], dtype=torch.float64))
                distributed.sum_gradients(net.parameters())
                batch_terms = max(sums[0].item(), 1.0)
                for p in net.parameters():
                    if p.grad is not None:
                        p.grad.div_(batch_terms)
                total, terms = total + sums[1].item(), terms + int(sums[0].item())
            optimiser.step()
        return total / max(terms, 1)

    def _train_epochs(
        self,
        train_epoch: Callable[[], float],
        validate: Callable[[], float] | None,
        metric: str,
        *,
        optimiser: torch.optim.Optimizer,
        lower_is_better: bool = False,
        eval_every: int = 1,
        time_limit: float | None = None,
        numpy_rng: np.random.Generator | None = None,
    ) -> Training:
        """Up to ``epochs`` calls of ``train_epoch`` (one pass over the data, ``net_`` in train
        mode; returns the mean loss), early-stopped on ``validate``.

        Every ``eval_every`` epochs and after the last one, ``validate()`` scores the model
        (``metric`` names the score in logs and ``fit_info``). The best weights are kept and
        training stops after ``patience`` validations without improvement; at the end the best
        weights are restored and ``net_`` is left in eval mode. With ``validate=None`` there is
        nothing to stop on: every epoch is trained and the last weights are kept.

        ``time_limit`` (seconds since the first epoch began, over resumes) starts no epoch once
        it has passed; the epoch that crosses it is validated, so a time-cut run still keeps its
        best weights and says so in ``stopped_by``.

        Under :meth:`fit_with_checkpoints` a checkpoint is written after every epoch
        (:mod:`.torch_checkpoint`): ``optimiser`` and ``numpy_rng`` (the generator ``train_epoch``
        draws orders or negatives from, if any) are saved and restored with the network.
        """
        net = self.net_
        main = distributed.is_main()
        self._order_rng = torch.Generator().manual_seed(self.seed)
        several = distributed.world_size() > 1
        if several:
            # One starting point for all (the seeded initialisation is the same everywhere, but
            # this does not rest on it), then each process its own dropout and negative draws.
            for tensor in net.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
            torch.manual_seed(int(np.random.SeedSequence([self.seed, distributed.rank()]).generate_state(1)[0]))
        checkpoint: Checkpoint | None = getattr(self, "_checkpoint", None)
        loop, best_state = LoopState(), None
        restored = checkpoint.load(self, optimiser, self._order_rng, numpy_rng, not several) if checkpoint else None
        if restored is not None:
            loop, best_state = restored.loop, restored.best_state
            if several:  # the file holds one process's dropout generator: draw afresh, per process
                torch.manual_seed(int(np.random.SeedSequence([self.seed, distributed.rank(), loop.epoch]).generate_state(1)[0]))
            # A fit that patience or the time limit ended goes on when the resume allows more of
            # either: stopping changes nothing before it, so it continues as a fit given the new
            # value from the start would have. (One that reached its epoch cap stays done.)
            if (loop.stopped_by == "patience" and loop.bad < self.patience) or (
                loop.stopped_by == "time_limit" and (time_limit is None or loop.elapsed < time_limit)
            ):
                loop.stopped_by = None
            if main:
                log.info("%s resumed after epoch %d from %s", self.name, loop.epoch, checkpoint.path)
        best = loop.best if loop.best is not None else (np.inf if lower_is_better else -np.inf)
        postfix = metric.lower().replace("@", "")  # "rmse", "ndcg10"
        epochs = range(loop.epoch + 1, self.epochs + 1) if loop.stopped_by is None else range(0)
        bar = tqdm(epochs, desc=self.name, unit="epoch", disable=not (self.progress and main))
        start = time.perf_counter() - loop.elapsed
        for epoch in bar:
            epoch_start = time.perf_counter()
            net.train()
            loss = train_epoch()
            loop.train_seconds.append(time.perf_counter() - epoch_start)
            # Clocks differ between processes: rank 0's decides for all.
            out_of_time = distributed.broadcast(time_limit is not None and time.perf_counter() - start >= time_limit)
            stopped_by = "time_limit" if out_of_time else ("epochs" if epoch == self.epochs else None)
            if validate is None or (epoch % eval_every and epoch != self.epochs and not out_of_time):
                if main:
                    log.info(
                        "%s epoch %d/%d: loss %.4f (%.1fs)",
                        self.name, epoch, self.epochs, loss, loop.train_seconds[-1],
                    )
            else:
                # Every process validates (sharded) and gets the same score; rank 0's is used all
                # the same, so that early stopping is one decision whatever the validation does.
                score = distributed.broadcast(validate())
                improved = score < best if lower_is_better else score > best
                if improved:
                    best, loop.best, loop.best_epoch, loop.bad = score, score, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                else:
                    loop.bad += 1
                bar.set_postfix({"loss": f"{loss:.4f}", postfix: f"{score:.4f}"}, refresh=False)
                if main:
                    log.info(
                        "%s epoch %d/%d: loss %.4f, valid %s %.4f%s (train %.1fs, total %.1fs)",
                        self.name, epoch, self.epochs, loss, metric, score, " *" if improved else "",
                        loop.train_seconds[-1], time.perf_counter() - epoch_start,
                    )
                if loop.bad >= self.patience:
                    stopped_by = "patience"
            loop.epoch, loop.loss, loop.stopped_by = epoch, loss, stopped_by
            loop.elapsed = time.perf_counter() - start
            if checkpoint is not None and main:
                checkpoint.save(self, optimiser, self._order_rng, numpy_rng, loop, best_state)
            if stopped_by is not None:
                break
        bar.close()
        if best_state is not None:
            net.load_state_dict(best_state)
        else:
            loop.best_epoch = loop.epoch
        net.eval()
        del self._order_rng  # a run's own: not part of the fitted model
        kept = loop.best if best_state is not None else None
        return Training(
            metric, loop.epoch, loop.best_epoch, kept, loop.train_seconds, loop.stopped_by or "epochs",
            distributed.world_size(), loop.loss,
        )

    def fit_with_checkpoints(self, split: Split, directory: str | Path, resume: bool = False) -> Self:
        """``fit`` writing a checkpoint to ``directory/checkpoint`` after every epoch; with
        ``resume``, a fit continued from the checkpoint there (:mod:`.torch_checkpoint`)."""
        self._checkpoint = Checkpoint(Path(directory) / "checkpoint", resume)
        try:
            return self.fit(split)
        finally:
            del self._checkpoint

    def _valid_ndcg(self, split: Split, users: list[str]) -> float:
        """NDCG@10 of the ``"valid"`` stage on ``users``."""
        # Batches of 256 users: enough of them on a small validation set for N processes to
        # share (the batch is the unit of sharding), large enough for the network.
        summary, _ = evaluate_rankings(
            self, split, stage="valid", k=10, users=users, metrics=("NDCG@10",), batch_size=256
        )
        return float(summary["NDCG@10"])

    # -- persistence (JSON + safetensors: no pickle to execute on load) -------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        self._check_fitted()
        path = self._write_config(directory)
        extra_state, extra_tensors = self._extra_state()
        weights = {k: v.detach().cpu().contiguous() for k, v in self.net_.state_dict().items()}
        save_file({**weights, **extra_tensors}, str(path / f"{self.name}.safetensors"))
        state = {
            "items": self.items_.tolist(),
            "histories": self.histories_,
            **extra_state,
        }
        (path / f"{self.name}.json").write_text(json.dumps(state))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Self:
        config = cls._read_config(directory)
        path = Path(directory)
        state = json.loads((path / f"{cls.name}.json").read_text())
        tensors = load_file(str(path / f"{cls.name}.safetensors"))
        model = cls(**config["params"])
        model.items_ = np.asarray(state["items"], dtype=object)
        model.histories_ = {s: state["histories"][s] for s in STAGES}
        model.fit_info_ = config.get("fit_info", {})
        model._restore_extra(state, tensors)
        net = model._new_net()
        net.load_state_dict(tensors)
        model.net_ = net.to(model._torch_device()).eval()
        model._read_item_table(directory)
        model._build_index()
        return model


def valid_sample(split: Split, n: int | None, rng: np.random.Generator) -> list[str]:
    """The validation users of ``split``, or a seeded sample of ``n`` of them (None = all)."""
    users = list(split.valid["user_id"])
    if n is not None and len(users) > n:
        users = list(rng.choice(users, n, replace=False))
    return users


def check_positive_ints(**values: Any) -> None:
    """Raise ``ValueError`` unless every value is a positive ``int`` (``bool`` is not one)."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")


__all__ = ["TorchRecommender", "Training", "check_positive_ints", "valid_sample"]
