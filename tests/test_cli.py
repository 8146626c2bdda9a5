"""The CLI end to end on a user's own CSV with a tiny model: train -> recommend -> evaluate."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from promptrec.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{(s + t) % 15}", t) for u in range(30) for s in [int(rng.integers(15))] for t in range(6)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(root / "events.csv", index=False)
    pd.DataFrame({"item_id": [f"i{j}" for j in range(15)], "title": [f"Item number {j}" for j in range(15)]}).to_csv(
        root / "items.csv", index=False
    )
    cfg = root / "run.yaml"
    cfg.write_text(
        f"data:\n  loader: tabular\n  path: {root / 'events.csv'}\n  options:\n    items: {root / 'items.csv'}\n"
        "index:\n  method: sequential\nmodel:\n  preset: tiny\n"
        "train:\n  epochs: 1\n  batch_size: 16\n  val_users: 10\neval:\n  unconstrained_users: 5\n"
    )
    result = runner.invoke(app, ["train", "--config", str(cfg), "--output", str(root / "run")])
    assert result.exit_code == 0, result.output
    # What train wrote, kept aside: a later test rewrites run/metrics.json.
    (root / "train_metrics.json").write_text((root / "run" / "metrics.json").read_text())
    return root


def test_train_writes_model_and_metrics(trained):
    metrics = json.loads((trained / "run" / "metrics.json").read_text())
    assert {"HR@10", "NDCG@10", "train_seconds", "eval_seconds", "eval_users"} <= metrics["model"].keys()
    assert "HR@10" in metrics["popularity"] and metrics["command"]
    assert (trained / "run" / "model" / "model.safetensors").exists()


def test_recommend_json_with_titles(trained):
    result = runner.invoke(app, ["recommend", "--model", str(trained / "run" / "model"), "--user", "u1", "-k", "4", "--json"])
    assert result.exit_code == 0, result.output
    recs = json.loads(result.output)
    assert len(recs) == 4 and all(r["title"].startswith("Item number") for r in recs)


def test_evaluate_saved_model(trained):
    out = trained / "eval.json"
    result = runner.invoke(app, ["evaluate", "--model", str(trained / "run" / "model"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "popularity" in result.output and json.loads(out.read_text())["model"]["eval_users"] == 30


def test_evaluate_reproduces_the_metrics_train_wrote(trained):
    """``promptrec evaluate`` on the saved model gives the test metrics ``promptrec train`` wrote
    for the model it had in memory: same users, same lists, so the same numbers (not only exit 0).
    Timings differ between runs and are left out."""
    out = trained / "reeval.json"
    result = runner.invoke(app, ["evaluate", "--model", str(trained / "run" / "model"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads((trained / "train_metrics.json").read_text())["model"]
    again = json.loads(out.read_text())["model"]
    timing = ("seconds", "per_second")
    shared = {
        k for k in written.keys() & again.keys()
        if isinstance(again[k], (int, float)) and not isinstance(again[k], bool) and not k.endswith(timing)
    }
    # The ranking metrics, the rates and the user count are all compared.
    assert {"HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR", "eval_users", "invalid_rate",
            "unconstrained_invalid_rate", "unconstrained_history_rate"} <= shared
    assert again["eval_users"] == 30 and 0 < again["NDCG@10"] < 1  # a real, non-trivial measurement
    for key in sorted(shared):
        assert again[key] == pytest.approx(written[key], abs=1e-9), key


def test_unknown_config_key_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  epoch: 1\n")
    result = runner.invoke(app, ["train", "--config", str(cfg), "--output", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert "epoch" in str(result.exception) or "epoch" in result.output


def test_evaluate_run_rewrites_the_run_directory(trained):
    from promptrec.pipeline import evaluate_run

    (trained / "run" / "metrics.json").unlink()
    metrics = evaluate_run(trained / "run", progress=False, command="test")
    assert metrics["model"]["eval_users"] == 30 and "HR@10" in metrics["popularity"]
    assert json.loads((trained / "run" / "metrics.json").read_text())["command"] == "test"


def test_every_row_of_an_evaluation_covers_the_same_users(trained):
    """``--users N`` draws one seeded sample that the model and every comparison are scored on."""
    out = trained / "eval_sample.json"
    result = runner.invoke(app, ["evaluate", "--model", str(trained / "run" / "model"), "--users", "7",
                                 "--compare", "popularity", "--compare", "itemknn", "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert set(rows) == {"model", "popularity", "itemknn"}
    assert {row["eval_users"] for row in rows.values()} == {7}
    assert "7 test users for every row" in result.output


def test_expected_errors_are_one_line_and_exit_2(trained, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\nu1,i1,1\nu1,i2,x\n")
    result = runner.invoke(app, ["train", "--model", "popularity", "--loader", "tabular", "--data", str(bad),
                                 "--output", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {bad}, line 3: non-numeric timestamp 'x'"
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path)])
    assert result.exit_code == 2 and "not a saved promptrec model directory" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["train", "--model", "sasrec", "--set", "epochz=3", "--output", str(tmp_path / "r")])
    assert result.exit_code == 2 and "unknown parameter 'epochz'" in result.output
