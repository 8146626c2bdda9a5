"""The shared language-model training loop (:mod:`promptrec.models.lm_trainer`) on a one-weight
model whose every number is known: the callbacks' order, the kept weights, patience, the plateau
cut, the non-finite loss error, and checkpoint/resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from promptrec.models.lm_trainer import Callback, Trainer, TrainerConfig


class Scalar(torch.nn.Module):
    """One weight ``w`` (a matrix, so it is decayed) and a bias ``b`` (not decayed)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1, 1))
        self.b = torch.nn.Parameter(torch.zeros(1))


def quadratic(model: torch.nn.Module, batch: float) -> tuple[torch.Tensor, float]:
    """(w - batch)^2 + b^2, already a mean: weight 1."""
    return (model.w[0, 0] - batch) ** 2 + model.b[0] ** 2, 1.0


def steps(n: int):
    """``n`` batches per epoch, each the target 1.0."""
    return lambda epoch: ([1.0] * n, n)


def scripted(scores: list[float]):
    """A validation that returns ``scores`` in turn."""
    it = iter(scores)
    return lambda: {"score": next(it)}


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.lrs: list[float] = []
        self.weights: dict[int, float] = {}

    def after_optimizer_step(self, trainer: Trainer) -> None:
        self.events.append(("optimizer", trainer.state["step"] + 1))
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])  # the rate this step used

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        self.events.append(("step", trainer.state["step"]))

    def on_validation(self, trainer: Trainer, metrics: dict, improved: bool) -> None:
        self.events.append(("validation", trainer.state["epoch"], metrics["score"], improved))
        self.weights[trainer.state["epoch"]] = trainer.raw.w.item()

    def on_checkpoint(self, trainer: Trainer, directory: Path) -> None:
        self.events.append(("checkpoint", trainer.state["epoch"]))


def plain(**overrides) -> TrainerConfig:
    settings = dict(
        lr=0.1, total_steps=12, epochs=4, schedule="constant", accelerate=False, monitor="score", report=False, progress=False
    )
    return TrainerConfig(**{**settings, **overrides})


def test_callbacks_see_every_step_in_order() -> None:
    rec = Recorder()
    trainer = Trainer(Scalar(), plain(epochs=2), [rec]).fit(steps(3), quadratic, scripted([0.1, 0.2]))
    assert rec.events == [
        ("optimizer", 1), ("step", 1), ("optimizer", 2), ("step", 2), ("optimizer", 3), ("step", 3),
        ("validation", 0, 0.1, True),
        ("optimizer", 4), ("step", 4), ("optimizer", 5), ("step", 5), ("optimizer", 6), ("step", 6),
        ("validation", 1, 0.2, True),
    ]  # fmt: skip
    assert trainer.state["step"] == 6 and trainer.state["best_epoch"] == 1


def test_the_step_is_adamw_with_the_scheduled_rate() -> None:
    """AdamW's first step moves every weight by the rate, whatever its gradient's scale; the
    1-D bias is exempt from weight decay, the matrix is not."""
    model = Scalar()
    with torch.no_grad():
        model.b.fill_(1.0)
    trainer = Trainer(model, plain(epochs=1, weight_decay=0.5, total_steps=1))
    trainer.fit(steps(1), quadratic)
    assert model.w.item() == pytest.approx(0.1, abs=1e-6)  # w = 0: no decay to apply, rate up
    assert model.b.item() == pytest.approx(1.0 - 0.1, abs=1e-6)  # no decay: only the step
    assert trainer.train_loss == pytest.approx(1.0 + 1.0)


def test_the_best_weights_are_restored() -> None:
    rec = Recorder()
    trainer = Trainer(Scalar(), plain(), [rec]).fit(steps(2), quadratic, scripted([0.1, 0.5, 0.3, 0.2]))
    assert trainer.state["best_epoch"] == 1 and trainer.state["best"] == 0.5
    assert trainer.state["epoch"] == 3  # every epoch ran: no patience
    assert rec.weights[3] != rec.weights[1]
    assert trainer.raw.w.item() == rec.weights[1]
    assert not trainer.raw.training


def test_without_validation_the_last_weights_stay() -> None:
    rec = Recorder()
    trainer = Trainer(Scalar(), plain(epochs=2), [rec]).fit(steps(2), quadratic)
    assert trainer.best_state is None and trainer.state["best_epoch"] == -1
    assert [e[0] for e in rec.events] == ["optimizer", "step"] * 4
    assert trainer.raw.w.item() > 0.3


def test_patience_stops_at_the_expected_epoch() -> None:
    rec = Recorder()
    trainer = Trainer(Scalar(), plain(epochs=10, patience=2), [rec])
    trainer.fit(steps(1), quadratic, scripted([0.5, 0.6, 0.4, 0.6, 0.9]))
    # Best at epoch 1; epochs 2 and 3 bring nothing (0.6 is not a gain): stop after epoch 3.
    assert trainer.state["epoch"] == 3 and trainer.state["best_epoch"] == 1
    assert trainer.state["bad_epochs"] == 2 and trainer.state["step"] == 4


def test_plateau_cuts_the_rate_at_the_expected_steps() -> None:
    rec = Recorder()
    config = plain(epochs=5, schedule="plateau", total_steps=10, warmup_ratio=0.2, decay_patience=2, decay_factor=0.5)
    trainer = Trainer(Scalar(), config, [rec]).fit(steps(2), quadratic, scripted([0.5, 0.4, 0.3, 0.2, 0.1]))
    # warm-up over 2 steps (rate x (step + 1) / 3), then 0.1; cut x0.5 after epochs 2 and 4
    # without gain (bad epochs 2 and 4), from the next step on.
    expected = [0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]
    assert rec.lrs == pytest.approx(expected)
    assert trainer.state["lr_scale"] == 0.25
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


def test_decay_covers_every_weight_when_asked() -> None:
    """The cross-encoder's recipe: one group, every parameter decayed."""
    model = Scalar()
    with torch.no_grad():
        model.b.fill_(1.0)
    Trainer(model, plain(epochs=1, total_steps=1, weight_decay=0.5, decay_matrices_only=False)).fit(
        steps(1), lambda m, batch: (m.w[0, 0] * 0.0 + m.b[0] * 0.0, 1.0)
    )
    assert model.b.item() == pytest.approx(1.0 * (1 - 0.1 * 0.5))  # decay only: zero gradient


def test_a_non_finite_loss_stops_with_a_clear_error() -> None:
    def loss(model, batch):
        value, weight = quadratic(model, batch)
        return value * (float("nan") if batch == 3 else 1.0), weight

    trainer = Trainer(Scalar(), plain(nan_hint="lower the rate"))
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step 3 \(epoch 1, .*\): lower the rate"):
        trainer.fit(lambda epoch: ([1.0, 2.0, 3.0], 3), loss)


def test_the_time_limit_ends_the_run_after_a_validation(monkeypatch) -> None:
    clock = iter(range(1000))
    monkeypatch.setattr("promptrec.models.lm_trainer.time.time", lambda: float(next(clock)))
    rec = Recorder()
    trainer = Trainer(Scalar(), plain(epochs=3, time_limit=2.5), [rec]).fit(steps(10), quadratic, scripted([0.1, 0.2]))
    assert trainer.stopped_by_time and trainer.state["epoch"] == 0
    assert trainer.state["step"] < 10 and rec.events[-1][0] == "validation"


def test_a_checkpoint_resumes_the_run_it_came_from(tmp_path: Path) -> None:
    """Under accelerate (one process): three epochs in one go, and two then one more from the
    checkpoint, end on the same weights, state and log."""
    scores = [0.3, 0.1, 0.2]

    def run(directory: Path, epochs: int, resume: bool, done: int = 0) -> tuple[Trainer, Recorder]:
        torch.manual_seed(0)
        rec = Recorder()
        config = plain(accelerate=True, epochs=epochs, schedule="plateau", decay_patience=1, total_steps=6)
        trainer = Trainer(Scalar(), config, [rec], output_dir=directory, checkpoint_dir=directory / "checkpoint")
        trainer.fit(steps(2), quadratic, scripted(scores[done:]), resume=resume)
        return trainer, rec

    whole, _ = run(tmp_path / "whole", 3, False)
    first, rec = run(tmp_path / "parts", 2, False)
    assert ("checkpoint", 1) in rec.events
    assert json.loads((tmp_path / "parts" / "checkpoint" / "trainer_state.json").read_text())["epoch"] == 1
    rest, _ = run(tmp_path / "parts", 3, True, done=2)
    assert rest.state == {**whole.state, "train_seconds": rest.state["train_seconds"]}
    assert rest.state["lr_scale"] == 0.25 and rest.state["best_epoch"] == 0
    assert rest.raw.w.item() == whole.raw.w.item()  # the best (epoch 0) weights, from best.safetensors

    def logged(directory: Path) -> list[dict]:
        lines = (directory / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "train_seconds"} for line in lines]

    assert logged(tmp_path / "parts") == logged(tmp_path / "whole")
