"""One checkpoint file for the torch baselines' epoch loop, so that a long fit can be resumed.

A BSARec fit on Amazon Sports takes hours on a CPU; a run cut by a reboot or a session's end
should continue from its last epoch, not start again. After every epoch the loop writes
``checkpoint.safetensors`` in the run's checkpoint directory: the network's weights, the best
weights so far, the optimiser's state, the random generators (torch's global one, which draws
dropout and negatives, the loop's order generator and the model's numpy generator), and, as
JSON in the file's metadata, the loop's own state (epoch, best score, validations without gain,
seconds so far). It is written to a temporary name and renamed, so a run killed while writing
leaves the previous checkpoint whole. No pickle: safetensors and JSON only.

A resumed single-process fit continues exactly where the checkpoint left it and ends with the
weights an uninterrupted fit would have (``tests/test_torch_checkpoint.py``). The parameters
that shape the training must be the ones the checkpoint was written with; ``epochs``,
``patience``, ``time_limit``, ``device`` and ``progress`` may change (a resumed run may be
given more epochs or more time, and a fit that patience or the time limit ended goes on when
given more of it).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

FILENAME = "checkpoint.safetensors"
# Parameters a resumed run may change: how long it may go on and where it runs, not what it learns.
MAY_CHANGE = frozenset({"epochs", "patience", "time_limit", "device", "progress"})


@dataclass
class LoopState:
    """What the epoch loop needs to go on from the end of ``epoch``."""

    epoch: int = 0
    best: float | None = None
    best_epoch: int = 0
    bad: int = 0  # validations without gain since the best
    train_seconds: list[float] = field(default_factory=list)
    elapsed: float = 0.0  # seconds since the first epoch began, over all resumes (time_limit)
    loss: float | None = None
    stopped_by: str | None = None  # set once the fit has ended


@dataclass
class Restored:
    loop: LoopState
    best_state: dict[str, torch.Tensor] | None


class Checkpoint:
    """The checkpoint file of one fit in ``directory`` (module doc)."""

    def __init__(self, directory: str | Path, resume: bool) -> None:
        self.directory = Path(directory)
        self.resume = resume

    @property
    def path(self) -> Path:
        return self.directory / FILENAME

    def save(
        self,
        model: Any,
        optimiser: torch.optim.Optimizer,
        order_rng: torch.Generator,
        numpy_rng: np.random.Generator | None,
        loop: LoopState,
        best_state: dict[str, torch.Tensor] | None,
    ) -> None:
        net: nn.Module = model.net_
        tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
        if best_state is not None:
            tensors.update({f"best.{k}": v for k, v in best_state.items()})
        optimiser_tensors, optimiser_meta = _flatten_optimiser(optimiser)
        tensors.update(optimiser_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.order"] = order_rng.get_state()
        device = next(net.parameters()).device
        if device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
        state = {
            "model": model.name,
            "params": _comparable(model.get_params()),
            "items": len(model.items_),
            "loop": loop.__dict__,
            "optimiser": optimiser_meta,
            "numpy_rng": None if numpy_rng is None else numpy_rng.bit_generator.state,
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(FILENAME + ".partial")
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(tensors, str(partial), metadata={"state": json.dumps(state)})
        os.replace(partial, self.path)

    def load(
        self,
        model: Any,
        optimiser: torch.optim.Optimizer,
        order_rng: torch.Generator,
        numpy_rng: np.random.Generator | None,
        restore_global_rng: bool = True,
    ) -> Restored | None:
        """Restore the network, optimiser and generators from the file; None when there is none.

        ``restore_global_rng=False`` leaves torch's global generator alone (processes of a
        data-parallel run each draw their own dropout; the file holds the first one's).
        """
        if not self.resume or not self.path.exists():
            return None
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            state = json.loads(f.metadata()["state"])
        self._check(model, state)
        tensors = load_file(str(self.path))
        net: nn.Module = model.net_
        device = next(net.parameters()).device
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        best = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")} or None
        _restore_optimiser(optimiser, tensors, state["optimiser"])
        if restore_global_rng:
            torch.set_rng_state(tensors["rng.torch"])
            if "rng.cuda" in tensors and device.type == "cuda":
                torch.cuda.set_rng_state(tensors["rng.cuda"], device)
        order_rng.set_state(tensors["rng.order"])
        if numpy_rng is not None and state["numpy_rng"] is not None:
            numpy_rng.bit_generator.state = state["numpy_rng"]
        return Restored(LoopState(**state["loop"]), best)

    def _check(self, model: Any, state: dict[str, Any]) -> None:
        where = f"{self.path}: the checkpoint"
        if state["model"] != model.name:
            raise ValueError(f"{where} is of a {state['model']!r} model, not {model.name!r}")
        mine = _comparable(model.get_params())
        for key in sorted(set(mine) | set(state["params"])):
            if key in MAY_CHANGE:
                continue
            if mine.get(key) != state["params"].get(key):
                raise ValueError(
                    f"{where} was written with {key}={state['params'].get(key)!r}, this run has "
                    f"{mine.get(key)!r}: resume with the same parameters or train into another directory"
                )
        if state["items"] != len(model.items_):
            raise ValueError(f"{where} has {state['items']} items, this data {len(model.items_)}: not the same data")


def _comparable(params: dict[str, Any]) -> dict[str, Any]:
    # As JSON would give them back (tuples as lists), so saved and current values compare equal.
    return json.loads(json.dumps(params, default=str))


def _flatten_optimiser(optimiser: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimiser's state dict as tensors named ``optimiser.<param>.<key>`` plus JSON."""
    saved = optimiser.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in saved["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimiser.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": saved["param_groups"], "scalars": scalars}


def _restore_optimiser(optimiser: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = defaultdict(dict)
    for name, value in tensors.items():
        if name.startswith("optimiser."):
            _, index, key = name.split(".", 2)
            state[int(index)][key] = value
    for index, entries in meta["scalars"].items():
        state[int(index)].update(entries)
    optimiser.load_state_dict({"state": dict(state), "param_groups": meta["param_groups"]})


__all__ = ["Checkpoint", "LoopState", "Restored"]
