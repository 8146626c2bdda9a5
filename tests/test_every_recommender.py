"""Every registered recommender through every command that takes a saved model: train (tiny) ->
save -> ``promptrec evaluate``, ``promptrec recommend`` and ``promptrec serve`` + ``POST
/recommend`` on the directory, with the same numbers and the same top-k everywhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import ServedModel, cyclic_data
from typer.testing import CliRunner

from promptrec.cli import RECOMMENDER_HELP, app
from promptrec.core.recommender import load_recommender

runner = CliRunner()
K = 5
TINY_LM = {
    "model": {"preset": "tiny", "max_history": 8},
    "index": {"method": "random", "params": {"levels": 1}},
    "train": {"epochs": 2, "batch_size": 16, "lr": 0.003, "val_users": 10},
    "eval": {"unconstrained_users": 5},
}
PARAMS = {
    "popularity": {},
    "itemknn": {"neighbours": 10},
    "bpr": {"epochs": 2, "factors": 8},
    "biased_mf": {"epochs": 2, "factors": 8},
    "sasrec": {"epochs": 2, "hidden": 16, "max_len": 8},
    "bsarec": {"epochs": 2, "hidden": 16, "max_len": 8},
    "p5": TINY_LM,
    "p5-gpt2": {**TINY_LM, "model": {**TINY_LM["model"], "backbone": "gpt2"}, "tasks": {"weights": {"sequence": 1.0}},
                "train": {**TINY_LM["train"], "history_loss": True}},
}
# Registered models this file cannot train without an outside service or pretrained text
# encoder; each has its own contract test there.
ELSEWHERE = {
    "llm": "needs an OpenAI-compatible chat endpoint: tests/test_llm.py runs the contract against a local one",
    # Through the CLI and the server its tiny random encoder scores items nearly alike, and the
    # server's one torch thread against the CLI's two reorders near ties.
    "cross_encoder": "fine-tunes a pretrained text encoder: tests/test_cross_encoder.py runs the contract on a tiny BERT",
}


def test_this_file_covers_the_whole_registry() -> None:
    # In a fresh interpreter: other tests register stand-in recommenders of their own.
    listed = subprocess.run(
        [sys.executable, "-c", "from promptrec.core.recommender import recommender_names; print(*recommender_names())"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    covered = {name.split("-")[0] for name in PARAMS} | set(ELSEWHERE) | {"cold_prefix"}  # the test below
    assert covered == set(listed)
    assert all(name in RECOMMENDER_HELP for name in listed)  # what `promptrec train --help` lists


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """The cyclic data as the files a user would bring: interactions (with ratings) and items."""
    directory = tmp_path_factory.mktemp("data")
    data = cyclic_data(n_users=30, n_items=24, length=8)
    frame = data.interactions.copy()
    frame["rating"] = 1.0 + (frame["timestamp"] % 5)
    frame.to_csv(directory / "interactions.csv", index=False)
    data.items.reset_index().to_csv(directory / "items.csv", index=False)
    return {"loader": "tabular", "path": str(directory / "interactions.csv"), "options": {"items": str(directory / "items.csv")}}


def train(tmp: Path, dataset: dict, name: str, params: dict) -> Path:
    job = {"recommender": name.split("-")[0], "data": dataset, "params": params}
    (tmp / "job.yaml").write_text(yaml.safe_dump(job))
    result = runner.invoke(app, ["train", "--config", str(tmp / "job.yaml"), "--output", str(tmp / "run")])
    assert result.exit_code == 0, result.output
    return tmp / "run"


def check_every_command(run: Path, tmp: Path, env: dict[str, str] | None = None) -> None:
    model = run / "model"
    trained = json.loads((run / "metrics.json").read_text())

    # evaluate reproduces what train measured, on the same users for every row.
    out = tmp / "evaluate.json"
    result = runner.invoke(app, ["evaluate", "--model", str(model), "--output", str(out)])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(out.read_text())
    for metric in ("HR@5", "NDCG@10", "MRR"):
        assert evaluated["model"][metric] == pytest.approx(trained["model"][metric], abs=1e-9)
        assert evaluated["popularity"][metric] == pytest.approx(trained["popularity"][metric], abs=1e-9)
    assert evaluated["model"]["eval_users"] == evaluated["popularity"]["eval_users"] == trained["model"]["eval_users"]

    # ranked (what the server answers with) is recommend's table as lists, explicit histories too.
    rec = load_recommender(model)
    users = rec.users()[:3]
    histories = {users[0]: rec.catalogue()[:4]}
    table = rec.recommend(users, k=K, histories=histories)
    lists = rec.ranked(users, k=K, histories=histories)
    assert len(lists) == len(users)
    for u, items in zip(users, lists):
        rows = table[table["user_id"] == u]
        assert [i for i, _ in items] == rows["item_id"].tolist()
        assert [s for _, s in items] == pytest.approx(rows["score"].tolist())

    # recommend and serve give the same list.
    user = "user3"
    result = runner.invoke(app, ["recommend", "--model", str(model), "--user", user, "-k", str(K), "--json"])
    assert result.exit_code == 0, result.output
    answer = next(line for line in result.output.splitlines() if line.startswith("[{"))  # stderr notes aside
    listed = [row["item_id"] for row in json.loads(answer)]
    assert len(listed) == K
    served = ServedModel(model, tmp / "feedback.db", env=env)
    try:
        response = httpx.post(f"{served.url}/recommend", json={"user_id": user, "k": K},
                              headers={"X-API-Key": served.key}, timeout=60)
    finally:
        served.stop()
    assert response.status_code == 200, response.text
    assert [row["item_id"] for row in response.json()["items"]] == listed


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_train_evaluate_recommend_serve(name, dataset, tmp_path) -> None:
    check_every_command(train(tmp_path, dataset, name, PARAMS[name]), tmp_path)


def test_the_cold_start_wrapper_through_every_command(dataset, tiny_text_encoder, tmp_path) -> None:
    # It wraps a semantic-id P5 model (codes from a text encoder: a tiny random one stands in for MiniLM).
    base = {**TINY_LM, "index": {"method": "semantic",
                                 "params": {"encoder": str(tiny_text_encoder), "levels": 2, "codebook": 4}}}
    check_every_command(train(tmp_path, dataset, "cold_prefix", {"share": 0.2, "base": {"recommender": "p5",
                                                                                           "params": base}}), tmp_path)


def test_a_lora_model_is_served_and_found_after_its_base_moved(dataset, tmp_path) -> None:
    """A LoRA model names its base so that it is found again: relative to the model directory
    (both moved together) or under $PROMPTREC_MODEL_PATH (the base moved elsewhere)."""
    (tmp_path / "base").mkdir()
    base = train(tmp_path / "base", dataset, "p5", PARAMS["p5-gpt2"])
    lora = {**PARAMS["p5-gpt2"], "model": {"pretrained": str(base / "model"), "tuning": {"method": "lora", "r": 4},
                                           "max_history": 8}}
    lora.pop("index")  # the base's own ids
    (tmp_path / "tuned").mkdir()
    train(tmp_path / "tuned", dataset, "p5", lora)

    # Both moved together: the relative path finds the base.
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(tmp_path / "base", moved / "base")
    shutil.move(tmp_path / "tuned", moved / "tuned")
    check_every_command(moved / "tuned" / "run", moved / "tuned")

    # The base alone moved elsewhere: found under PROMPTREC_MODEL_PATH by its folder name.
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    shutil.move(moved / "base" / "run" / "model", shelf / "model")
    result = runner.invoke(app, ["recommend", "--model", str(moved / "tuned" / "run" / "model"), "--user", "user3"])
    assert result.exit_code == 2 and "PROMPTREC_MODEL_PATH" in result.output
    os.environ["PROMPTREC_MODEL_PATH"] = str(shelf)
    try:
        check_every_command(moved / "tuned" / "run", moved / "tuned", env={"PROMPTREC_MODEL_PATH": str(shelf)})
    finally:
        del os.environ["PROMPTREC_MODEL_PATH"]
