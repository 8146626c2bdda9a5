"""Template search: one row per template, the best seen template picked on validation, the
seen/unseen gap; known answers from a stub, then a tiny real model through the library and CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import cyclic_data
from typer.testing import CliRunner

from promptrec.data import leave_one_out
from promptrec.models.p5.template_search import sample_users, search_templates
from promptrec.prompts.templates import Template, TemplateSet

# Rank of the target under each (template, stage); "u" is unseen and better than every seen one
# on validation, so it must not be picked.
RANKS = {
    ("a", "valid"): 3, ("a", "test"): 1,
    ("b", "valid"): 1, ("b", "test"): 2,
    ("c", "valid"): 2, ("c", "test"): 1,
    ("u", "valid"): 1, ("u", "test"): 4,
}


def ndcg(rank: int) -> float:
    return 1.0 / np.log2(rank + 1)


class Stub:
    """Puts each user's target at the rank RANKS gives for the template, other unseen items around it."""

    def __init__(self, split, ranks=RANKS, seen=("a", "b", "c"), unseen=("u",)) -> None:
        self.split = split
        self.ranks = ranks
        self.templates = TemplateSet(
            [Template("sequential", t, "{history}", "{target}", seen=True) for t in seen]
            + [Template("sequential", t, "{history}", "{target}", seen=False) for t in unseen]
            + [Template("yesno", "y", "{item}", "{answer}")]
        )
        self.calls: list[str] = []

    def recommend(self, user_ids, k=10, exclude_seen=True, stage="test", template=None):
        self.calls.append(template)
        targets = self.split.targets(stage).set_index("user_id")["item_id"]
        history = self.split.history(stage)
        catalogue = list(self.split.data.items.index)
        rows = []
        for u in user_ids:
            others = [i for i in catalogue if i not in history[u] and i != targets[u]]
            ranked = others[: k - 1]
            ranked.insert(self.ranks[template, stage] - 1, targets[u])
            rows += [(u, item, -float(r), r) for r, item in enumerate(ranked[:k], start=1)]
        return pd.DataFrame(rows, columns=["user_id", "item_id", "score", "rank"])


def test_one_row_per_template_and_best_seen_by_validation(cyclic_split) -> None:
    stub = Stub(cyclic_split)
    res = search_templates(stub, cyclic_split, k=10)
    assert [r["template"] for r in res.rows] == ["a", "b", "c", "u"]  # the sequential family only
    assert [r["seen"] for r in res.rows] == [True, True, True, False]
    assert res.best == "b"  # "u" is better on validation but unseen; "a"/"c" win on test only
    for r in res.rows:
        for stage in ("valid", "test"):
            rank = RANKS[r["template"], stage]
            assert r[stage]["HR@5"] == 1.0 and r[stage]["NDCG@10"] == pytest.approx(ndcg(rank))
            assert r[stage]["eval_users"] == 40 and r[stage]["history_violations"] == 0
    assert set(stub.calls) == {"a", "b", "c", "u"}
    table = res.table()
    assert list(table["template"]) == ["a", "b", "c", "u"] and table["best"].tolist() == [False, True, False, False]
    assert "b *" in res.format()


def test_gap_is_unseen_minus_mean_of_seen(cyclic_split) -> None:
    res = search_templates(Stub(cyclic_split), cyclic_split, k=10)
    gap = res.gap("test")
    seen = np.mean([ndcg(1), ndcg(2), ndcg(1)])
    assert gap["NDCG@10"]["seen"] == pytest.approx(seen)
    assert gap["NDCG@10"]["unseen"] == pytest.approx(ndcg(4))
    assert gap["NDCG@10"]["gap"] == pytest.approx(ndcg(4) - seen)
    assert gap["NDCG@10"]["best_seen"] == pytest.approx(ndcg(2))
    assert gap["HR@10"]["gap"] == 0.0 and gap["HR@10"]["paired"]["t_pvalue"] == 1.0
    assert gap["NDCG@10"]["paired"]["n"] == 40
    assert json.loads(res.to_json())["gap"]["test"]["NDCG@10"]["gap"] == pytest.approx(ndcg(4) - seen)


def test_ties_go_to_the_template_listed_first_and_no_pick_without_validation(cyclic_split) -> None:
    ranks = {**RANKS, ("a", "valid"): 1}
    assert search_templates(Stub(cyclic_split, ranks), cyclic_split, k=10).best == "a"
    only_test = search_templates(Stub(cyclic_split), cyclic_split, stages=["test"], k=10)
    assert only_test.best is None and only_test.stages == ("test",)
    assert "valid" not in only_test.rows[0]
    with pytest.raises(ValueError, match="was not evaluated"):
        only_test.gap("valid")
    with pytest.raises(ValueError, match="select_by"):
        search_templates(Stub(cyclic_split), cyclic_split, k=5, select_by="NDCG@10")


def test_user_sample_is_seeded_and_shared(cyclic_split) -> None:
    a = sample_users(cyclic_split, ("valid", "test"), 12, seed=3)
    assert a == sample_users(cyclic_split, ("valid", "test"), 12, seed=3) and len(a) == 12
    assert a != sample_users(cyclic_split, ("valid", "test"), 12, seed=4)
    res = search_templates(Stub(cyclic_split), cyclic_split, users=12, seed=3, k=10)
    assert res.users == a and all(r[s]["eval_users"] == 12 for r in res.rows for s in res.stages)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny T5 P5 model trained for one epoch on cyclic data stored as a CSV, saved to disk."""
    from promptrec.data import load_dataset
    from promptrec.models.p5.config import RunConfig
    from promptrec.models.p5.model import P5Recommender

    root = tmp_path_factory.mktemp("templates")
    data = cyclic_data()
    data.interactions.to_csv(root / "events.csv", index=False)
    data.items.reset_index().to_csv(root / "items.csv", index=False)
    data_cfg = {"loader": "tabular", "path": str(root / "events.csv"), "options": {"items": str(root / "items.csv")}}
    split = leave_one_out(load_dataset("tabular", data_cfg["path"], **data_cfg["options"]))
    config = RunConfig().update({
        "data": data_cfg, "index.method": "sequential", "model.preset": "tiny",
        "train.epochs": 1, "train.batch_size": 32, "train.val_users": 10,
    })
    model = P5Recommender(config).fit(split, progress=False)
    model.save_pretrained(root / "model")
    return model, split, root / "model"


def test_a_tiny_model_is_searched_deterministically(tiny_model) -> None:
    model, split, _ = tiny_model
    first = search_templates(model, split, users=15, seed=0, k=10)
    second = search_templates(model, split, users=15, seed=0, k=10)
    ids = [t.id for t in model.templates.family("sequential", seen=None)]
    assert [r["template"] for r in first.rows] == ids and len(ids) == 5
    valid = {r["template"]: r["valid"]["NDCG@10"] for r in first.rows if r["seen"]}
    assert first.best == max(valid, key=valid.get)
    assert all(r[s]["history_violations"] == 0 and r[s]["invalid_rate"] == 0 for r in first.rows for s in first.stages)
    assert _without_timings(first.to_dict()) == _without_timings(second.to_dict())
    # The seen template the model evaluates with by default gives the same numbers as rec.evaluate.
    from promptrec.evaluation.ranking import evaluate_rankings

    default = model._sequential_template().id
    summary, _ = evaluate_rankings(model, split, stage="test", k=10, users=first.users, metrics=["NDCG@10"])
    assert next(r for r in first.rows if r["template"] == default)["test"]["NDCG@10"] == summary["NDCG@10"]


def _without_timings(report: dict) -> dict:
    for row in report["templates"]:
        for stage in report["stages"]:
            row[stage].pop("eval_seconds")
    return report


def test_cli_prints_the_table_and_writes_json(tiny_model, tmp_path) -> None:
    from promptrec.cli import app

    _, _, model_dir = tiny_model
    out = tmp_path / "templates.json"
    result = CliRunner().invoke(app, ["templates", "--model", str(model_dir), "--users", "10", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "seq-unseen-1" in result.output and "best seen template" in result.output
    saved = json.loads(out.read_text())
    assert len(saved["templates"]) == 5 and saved["users"] == 10 and saved["best"].startswith("seq-")
    only_valid = CliRunner().invoke(app, ["templates", "--model", str(model_dir), "--users", "10", "--stage", "valid"])
    assert only_valid.exit_code == 0, only_valid.output
    assert "test NDCG@10" not in only_valid.output
