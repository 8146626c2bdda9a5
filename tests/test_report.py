"""``promptrec compare`` on two tiny run directories written the way the pipeline writes them."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import cyclic_data
from typer.testing import CliRunner

from promptrec.cli import app
from promptrec.data import leave_one_out
from promptrec.evaluation.ranking import evaluate_rankings
from promptrec.evaluation.report import compare_runs, load_run
from promptrec.models.classic.itemknn import ItemKNN
from promptrec.models.classic.popularity import MostPopular
from promptrec.pipeline import write_run

runner = CliRunner()
PLOTS = ("metric_at_k.png", "popularity.png", "groups.png")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = cyclic_data()
    users = [f"user{u}" for u in range(40)]
    data.users = pd.DataFrame({"gender": ["F", "M"] * 20}, index=pd.Index(users, name="user_id"))
    split = leave_one_out(data)
    for name, model in (("knn", ItemKNN(neighbours=5)), ("pop1", MostPopular(seed=1))):
        summary, per_user = evaluate_rankings(model.fit(split), split, k=20, beyond=True)
        pop, pop_users = evaluate_rankings(MostPopular().fit(split), split, k=20, beyond=True)
        summary["train_seconds"] = pop["train_seconds"] = 0.5
        command = f"promptrec train --config {name}.yaml --output {name}"
        write_run(
            root / name,
            split,
            {"model": (summary, per_user), "popularity": (pop, pop_users)},
            data=data.summary(),
            config={},
            command=command,
        )
    return root


def test_run_directory_layout(runs) -> None:
    files = {p.name for p in (runs / "knn").iterdir()}
    assert {"metrics.json", "item_popularity.parquet"} <= files
    for entry in ("model", "popularity"):
        assert {f"per_user_{entry}.parquet", f"recommendations_{entry}.parquet"} <= files
    recs = pd.read_parquet(runs / "knn" / "recommendations_model.parquet")
    assert list(recs.columns) == ["user_id", "item_id", "rank"] and recs.groupby("user_id").size().eq(20).all()
    assert "recommended" not in pd.read_parquet(runs / "knn" / "per_user_model.parquet").columns
    entries = load_run(runs / "knn")
    assert [e.name for e in entries] == ["knn", "knn/popularity"]


def test_compare_writes_report_and_plots(runs, tmp_path) -> None:
    out = tmp_path / "report"
    result = runner.invoke(app, ["compare", str(runs / "knn"), str(runs / "pop1"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert report in result.output + "\n"  # the command prints the report it wrote
    for row in ("| knn ", "| knn/popularity ", "| pop1 "):
        assert row in report
    # Both runs carry the same popularity baseline (same split, same per-user values): one row.
    assert "| pop1/popularity " not in report
    assert "`promptrec train --config knn.yaml --output knn`" in report
    # Paired tests against the first run's model, and pop1 against its baseline (kept once).
    assert "Wilcoxon p" in report
    for pair in ("knn/popularity - knn", "pop1 - knn", "pop1 - knn/popularity"):
        assert f"| {pair} " in report
    assert "coverage@10" in report  # the beyond-accuracy table
    for name in PLOTS:
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
        assert f"]({name})" in report


def test_compare_reads_a_results_json_and_says_what_is_missing(runs, tmp_path) -> None:
    metrics = json.loads((runs / "knn" / "metrics.json").read_text())
    lone = tmp_path / "evaluated"
    lone.mkdir()
    (lone / "eval.json").write_text(json.dumps({"model": metrics["model"], "popularity": metrics["popularity"]}))
    text = compare_runs([lone, runs / "pop1"], tmp_path / "out", n_boot=200)
    assert "| evaluated/popularity " in text and "no per-user NDCG@10 for evaluated" in text
    assert (tmp_path / "out" / "metric_at_k.png").stat().st_size > 0


def test_compare_rejects_a_missing_directory(tmp_path) -> None:
    result = runner.invoke(app, ["compare", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "error:" in result.output and "no such run directory" in result.output  # one line, no traceback
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        compare_runs([tmp_path / "nope"], tmp_path / "o")


def test_seed_averaged_paired_test_has_the_known_mean(runs, tmp_path) -> None:
    """Two "seeds" of one run averaged per user equal that run; the difference against the
    other run is the difference of the per-user means, computed here by hand."""
    from promptrec.evaluation.report import seed_paired

    result = runner.invoke(app, ["compare", str(runs / "knn"), str(runs / "knn"), "--against", str(runs / "pop1")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    knn = pd.read_parquet(runs / "knn" / "per_user_model.parquet").set_index("user_id")["NDCG@10"]
    pop = pd.read_parquet(runs / "pop1" / "per_user_model.parquet").set_index("user_id")["NDCG@10"]
    assert out["NDCG@10"]["mean_diff"] == pytest.approx((knn - pop.reindex(knn.index)).mean())
    assert out["users"] == len(knn)
    # Both sides averaged over their seeds: knn twice against (pop1, knn) is half knn - pop1.
    result = runner.invoke(
        app, ["compare", str(runs / "knn"), str(runs / "knn"), "--against", str(runs / "pop1"), "--against", str(runs / "knn")]
    )
    assert result.exit_code == 0, result.output
    both = json.loads(result.output)
    assert both["NDCG@10"]["mean_diff"] == pytest.approx((knn - pop.reindex(knn.index)).mean() / 2)
    assert both["against"] == [str(runs / "pop1"), str(runs / "knn")]
    alone = tmp_path / "results.json"  # numbers without their per-user files
    alone.write_text((runs / "knn" / "metrics.json").read_text())
    with pytest.raises(ValueError, match="no per-user results"):
        seed_paired([alone], runs / "pop1")


def test_by_length_groups_every_user_once(runs) -> None:
    from promptrec.evaluation.report import by_history_length

    split = leave_one_out(cyclic_data())
    histories = split.history("test")
    out = by_history_length([runs / "knn"], histories, edges=(6, 7))
    assert sum(g["users"] for g in out["groups"]) == len(histories)
    knn = pd.read_parquet(runs / "knn" / "per_user_model.parquet")["NDCG@10"]
    # Every cyclic user has the same history length: one group, whose mean is the overall mean.
    assert len(out["groups"]) == 1 and out["groups"][0]["knn"] == pytest.approx(round(knn.mean(), 5))
