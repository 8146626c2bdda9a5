"""A torch baseline's fit cut after an epoch and resumed from its checkpoint ends where an
uncut fit ends: the same weights, epochs and best epoch (torch_checkpoint.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from promptrec.core.recommender import build_recommender
from promptrec.models.torch_checkpoint import FILENAME

# Dropout on, so that a resume that lost torch's generator state would end elsewhere; validated
# every epoch with patience high enough that every epoch runs.
CASES = {
    "sasrec": {"hidden": 16, "max_len": 5, "epochs": 5, "batch_size": 16, "dropout": 0.3, "patience": 10, "progress": False},
    "bsarec": {"hidden": 16, "max_len": 5, "epochs": 4, "batch_size": 32, "dropout": 0.3, "patience": 10, "progress": False},
    # negatives and orders from a numpy generator: the checkpoint must carry its state too
    "bpr": {"factors": 8, "epochs": 5, "batch_size": 64, "patience": 10, "progress": False},
}


class Cut(Exception):
    """Stands for the process being killed after some epoch."""


def _cut_after(model, epochs: int) -> None:
    """Make ``model`` raise at the start of epoch ``epochs + 1`` (after ``epochs`` checkpoints)."""
    original = model._minibatch_epoch
    calls = {"n": 0}

    def counted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > epochs:
            raise Cut
        return original(*args, **kwargs)

    model._minibatch_epoch = counted


def _cut_fit(name: str, params: dict, split, directory: Path, epochs: int) -> None:
    """A fit into ``directory`` killed after ``epochs`` epochs (their checkpoints written)."""
    cut = build_recommender(name, **params)
    _cut_after(cut, epochs)
    with pytest.raises(Cut):
        cut.fit_with_checkpoints(split, directory)


def _forbid_training(model) -> None:
    """Make any epoch of ``model`` fail the test: a finished fit resumed must not train."""
    model._minibatch_epoch = lambda *a, **k: pytest.fail("a finished fit was trained again")


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.net_.state_dict().items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_cut_fit_resumed_ends_as_the_uncut_one(name: str, cyclic_split, tmp_path: Path) -> None:
    params = CASES[name]
    whole = build_recommender(name, **params).fit_with_checkpoints(cyclic_split, tmp_path / "whole")
    assert (tmp_path / "whole" / "checkpoint" / FILENAME).exists()

    _cut_fit(name, params, cyclic_split, tmp_path / "cut", 2)
    resumed = build_recommender(name, **params)
    runs = []
    original = resumed._minibatch_epoch
    resumed._minibatch_epoch = lambda *a, **k: runs.append(1) or original(*a, **k)
    resumed.fit_with_checkpoints(cyclic_split, tmp_path / "cut", resume=True)

    assert len(runs) == params["epochs"] - 2  # only the epochs the cut run had not trained
    for key, value in _weights(whole).items():
        torch.testing.assert_close(resumed.net_.state_dict()[key], value, rtol=0, atol=0)
    for key in ("epochs_run", "best_epoch", "best_valid_NDCG@10", "stopped_by"):
        assert resumed.fit_info_[key] == whole.fit_info_[key], key
    assert resumed.recommend(["u0", "u1"], k=5).equals(whole.recommend(["u0", "u1"], k=5))

    # Without --resume the directory's checkpoint is not read: a fresh fit, the same result.
    again = build_recommender(name, **params).fit_with_checkpoints(cyclic_split, tmp_path / "cut")
    torch.testing.assert_close(_weights(again), _weights(whole), rtol=0, atol=0)


def test_a_finished_fit_resumed_trains_nothing_and_more_epochs_go_on(cyclic_split, tmp_path: Path) -> None:
    params = CASES["sasrec"]
    done = build_recommender("sasrec", **params).fit_with_checkpoints(cyclic_split, tmp_path)
    again = build_recommender("sasrec", **params)
    _forbid_training(again)
    again.fit_with_checkpoints(cyclic_split, tmp_path, resume=True)
    torch.testing.assert_close(_weights(again), _weights(done), rtol=0, atol=0)
    assert again.fit_info_["epochs_run"] == params["epochs"]

    # A run that ended at its epoch cap is done, whatever cap the resume is given: its best
    # weights are kept and nothing is trained (the cap is a parameter a resume may change).
    longer = build_recommender("sasrec", **{**params, "epochs": params["epochs"] + 2})
    _forbid_training(longer)
    longer.fit_with_checkpoints(cyclic_split, tmp_path, resume=True)
    torch.testing.assert_close(_weights(longer), _weights(done), rtol=0, atol=0)


def test_a_cut_fit_given_more_epochs_goes_on_to_the_new_cap(cyclic_split, tmp_path: Path) -> None:
    params = CASES["sasrec"]
    _cut_fit("sasrec", params, cyclic_split, tmp_path, 2)
    longer = build_recommender("sasrec", **{**params, "epochs": 7})
    longer.fit_with_checkpoints(cyclic_split, tmp_path, resume=True)
    assert longer.fit_info_["epochs_run"] == 7
    whole = build_recommender("sasrec", **{**params, "epochs": 7}).fit(cyclic_split)
    torch.testing.assert_close(_weights(longer), _weights(whole), rtol=0, atol=0)


@pytest.mark.parametrize("stop", [{"patience": 1}, {"time_limit": 1e-9}])
def test_a_fit_ended_by_patience_or_time_goes_on_when_given_more(stop: dict, cyclic_split, tmp_path: Path) -> None:
    # A rate this high makes validation fall back at once, so patience 1 ends the fit early.
    params = {**CASES["sasrec"], "epochs": 6, "lr": 0.3, **stop}
    ended = build_recommender("sasrec", **params).fit_with_checkpoints(cyclic_split, tmp_path)
    reason = "patience" if "patience" in stop else "time_limit"
    assert ended.fit_info_["stopped_by"] == reason and ended.fit_info_["epochs_run"] < 6

    # the same limit again: done, nothing trained
    same = build_recommender("sasrec", **params)
    _forbid_training(same)
    same.fit_with_checkpoints(cyclic_split, tmp_path, resume=True)

    # more patience (or no time limit): it goes on, and ends as a fit given that from the start
    more = {**params, "patience": 10, "time_limit": None}
    resumed = build_recommender("sasrec", **more).fit_with_checkpoints(cyclic_split, tmp_path, resume=True)
    whole = build_recommender("sasrec", **more).fit(cyclic_split)
    assert resumed.fit_info_["epochs_run"] == whole.fit_info_["epochs_run"] == 6
    assert resumed.fit_info_["best_epoch"] == whole.fit_info_["best_epoch"]
    torch.testing.assert_close(_weights(resumed), _weights(whole), rtol=0, atol=0)


def test_a_checkpoint_of_other_parameters_or_data_is_refused(cyclic_split, tmp_path: Path) -> None:
    params = CASES["sasrec"]
    _cut_fit("sasrec", params, cyclic_split, tmp_path, 1)
    with pytest.raises(ValueError, match=r"written with lr=0\.0005, this run has 0\.01"):
        build_recommender("sasrec", **{**params, "lr": 0.01}).fit_with_checkpoints(cyclic_split, tmp_path, resume=True)
    with pytest.raises(ValueError, match="of a 'sasrec' model, not 'bsarec'"):
        build_recommender("bsarec", **params).fit_with_checkpoints(cyclic_split, tmp_path, resume=True)
    # the file's loop state is JSON in the safetensors metadata, readable without torch
    from safetensors import safe_open

    with safe_open(str(tmp_path / "checkpoint" / FILENAME), framework="np") as f:
        state = json.loads(f.metadata()["state"])
    assert state["loop"]["epoch"] == 1 and state["loop"]["stopped_by"] is None
    assert np.isfinite(state["loop"]["best"])


def test_train_resume_from_the_command_line(tmp_path: Path) -> None:
    """``promptrec train --model sasrec -o OUT`` keeps OUT/checkpoint; ``--resume`` goes on."""
    from conftest import cyclic_data
    from typer.testing import CliRunner

    from promptrec.cli import app

    data = cyclic_data()
    csv = tmp_path / "interactions.csv"
    data.interactions.to_csv(csv, index=False)
    out = tmp_path / "run"
    args = [
        "train", "--model", "sasrec", "--loader", "tabular", "--data", str(csv), "-o", str(out),
        "--set", "hidden=16", "--set", "max_len=5", "--set", "epochs=3", "--set", "batch_size=16",
    ]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert (out / "checkpoint" / FILENAME).exists()
    first_metrics = json.loads((out / "metrics.json").read_text())["model"]
    first_weights = load_file(str(out / "model" / "sasrec.safetensors"))
    second = CliRunner().invoke(app, [*args, "--resume"])
    assert second.exit_code == 0, second.output
    # the finished fit is restored from its checkpoint, not trained again
    torch.testing.assert_close(load_file(str(out / "model" / "sasrec.safetensors")), first_weights, rtol=0, atol=0)
    second_metrics = json.loads((out / "metrics.json").read_text())["model"]
    assert {k: second_metrics[k] for k in ("HR@10", "NDCG@10")} == {k: first_metrics[k] for k in ("HR@10", "NDCG@10")}


def test_a_refused_resume_leaves_the_run_directory_as_it_was(tmp_path: Path) -> None:
    """``promptrec train --resume`` with parameters the checkpoint refuses fails before the run's
    record changes: its config.yaml still says what the run was trained with."""
    from conftest import cyclic_data

    from promptrec.pipeline import JobConfig, run_job

    events = tmp_path / "events.csv"
    cyclic_data(n_users=20).interactions.to_csv(events, index=False)
    job = {"recommender": "sasrec", "data": {"loader": "tabular", "path": str(events)},
           "params": {**CASES["sasrec"], "epochs": 2}}  # fmt: skip
    run_job(JobConfig.model_validate(job), tmp_path / "run", progress=False)
    config = (tmp_path / "run" / "config.yaml").read_text()
    changed = {**job, "params": {**job["params"], "lr": 0.01}}
    with pytest.raises(ValueError, match=r"written with lr=0\.0005, this run has 0\.01"):
        run_job(JobConfig.model_validate(changed), tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / "config.yaml").read_text() == config
    # A resume the checkpoint accepts records the config it ran with (patience may change).
    longer = {**job, "params": {**job["params"], "patience": 11}}
    run_job(JobConfig.model_validate(longer), tmp_path / "run", resume=True, progress=False)
    assert JobConfig.load(tmp_path / "run" / "config.yaml").params["patience"] == 11
