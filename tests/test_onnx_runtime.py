"""The LM's first-token logits on ONNX Runtime (``use_runtime("onnx")``, ``promptrec serve
--runtime onnx``): the same rankings and scores as PyTorch, an export that is cached, and clear
errors where it does not apply."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'promptrec[onnx]')")

from conftest import ServedModel, cyclic_data
from typer.testing import CliRunner

from promptrec.cli import app
from promptrec.core.recommender import load_recommender
from promptrec.data import leave_one_out
from promptrec.models.classic.popularity import MostPopular
from promptrec.models.p5 import onnx_runtime
from promptrec.models.p5.config import RunConfig
from promptrec.models.p5.model import P5Recommender


def config(backbone: str) -> RunConfig:
    return RunConfig().update({
        "model.preset": "tiny", "model.backbone": backbone, "model.max_history": 8, "index.method": "random",
        "index.params": {"levels": 1}, "tasks.weights": {"sequence": 1.0, "yesno": 1.0},
    })


@pytest.fixture(scope="module")
def split():
    return leave_one_out(cyclic_data(n_users=30, n_items=24, length=8))


@pytest.mark.parametrize("backbone", ["gpt2", "t5"])
def test_onnx_ranks_and_scores_as_torch(split, backbone, tmp_path) -> None:
    # Random weights are enough: the runtime must reproduce the forward pass, whatever it learned.
    rec = P5Recommender(config(backbone)).build(split)
    users = sorted(rec.train_history)[:12]
    # Histories of different lengths: the batch is padded, so the mask path is exercised.
    histories = {u: rec.history(u)[-(2 + n % 6):] for n, u in enumerate(users)}
    pairs = ([u for u in users for _ in range(2)], [i for _ in users for i in rec.item_ids[:2]])
    before = rec.recommend(users, k=10, histories=histories)
    scores_before = rec.score(*pairs)

    rec.use_runtime("onnx", cache_dir=tmp_path)
    assert (tmp_path / onnx_runtime.GRAPH_FILE).is_file()
    after = rec.recommend(users, k=10, histories=histories)
    assert after["item_id"].tolist() == before["item_id"].tolist()
    np.testing.assert_allclose(after["score"], before["score"], atol=1e-4)
    np.testing.assert_allclose(rec.score(*pairs), scores_before, atol=1e-5)

    rec.use_runtime("default")  # back to PyTorch
    assert rec.recommend(users, k=10, histories=histories)["score"].tolist() == before["score"].tolist()


def test_the_export_is_cached_and_dropped_when_the_weights_change(split, tmp_path, monkeypatch) -> None:
    rec = P5Recommender(config("gpt2")).build(split)
    rec.use_runtime("onnx", cache_dir=tmp_path)
    exported = (tmp_path / onnx_runtime.GRAPH_FILE).stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache has the graph")

    monkeypatch.setattr(onnx_runtime, "export", no_export)
    again = P5Recommender(config("gpt2")).build(split)
    again.use_runtime("onnx", cache_dir=tmp_path)
    assert (tmp_path / onnx_runtime.GRAPH_FILE).stat().st_mtime_ns == exported
    assert again._onnx is not None

    # Training replaces the weights the graph was exported from: PyTorch answers again.
    monkeypatch.undo()
    rec.config = rec.config.update({"train.epochs": 1, "train.batch_size": 16, "train.val_users": 5,
                                    "eval.unconstrained_users": 0})
    rec.fit(split)
    assert rec._onnx is None


def test_runtime_errors_are_one_clear_line(split) -> None:
    rec = P5Recommender(config("gpt2")).build(split)
    with pytest.raises(ValueError, match="runtime must be 'default' or 'onnx'"):
        rec.use_runtime("tensorrt")
    popularity = MostPopular().fit(split)
    with pytest.raises(ValueError, match="popularity has no runtime 'onnx'"):
        popularity.use_runtime("onnx")
    popularity.use_runtime("default")  # every model has its own code


def test_served_with_onnx_answers_as_recommend(split, tmp_path, monkeypatch) -> None:
    rec = P5Recommender(config("gpt2")).build(split)
    rec.save_pretrained(tmp_path / "model")
    saved = load_recommender(tmp_path / "model")
    expected = saved.recommend(["user3"], k=5)["item_id"].tolist()

    monkeypatch.setenv("PROMPTREC_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["recommend", "--model", str(tmp_path / "model"), "--user", "user3", "-k", "5",
                                      "--json", "--runtime", "onnx"])
    assert result.exit_code == 0, result.output
    listed = json.loads(next(line for line in result.output.splitlines() if line.startswith("[{")))
    assert [row["item_id"] for row in listed] == expected
    popularity = MostPopular().fit(split)
    popularity.save_pretrained(tmp_path / "popularity")
    result = CliRunner().invoke(app, ["recommend", "--model", str(tmp_path / "popularity"), "--user", "user3",
                                      "--runtime", "onnx"])
    assert result.exit_code == 2 and "popularity has no runtime 'onnx'" in result.output
    served = ServedModel(tmp_path / "model", tmp_path / "feedback.db", "--runtime", "onnx",
                         env={"PROMPTREC_CACHE": str(tmp_path / "cache")})
    try:
        headers = {"X-API-Key": served.key}
        answer = httpx.post(f"{served.url}/recommend", json={"user_id": "user3", "k": 5}, headers=headers, timeout=60)
        info = httpx.get(f"{served.url}/info", headers=headers, timeout=10).json()
    finally:
        served.stop()
    assert answer.status_code == 200, answer.text
    assert [row["item_id"] for row in answer.json()["items"]] == expected
    assert info["runtime"] == "onnx"
    assert list((tmp_path / "cache" / "runtimes" / "onnx").glob(f"*/{onnx_runtime.GRAPH_FILE}"))
