"""Contract tests for the P5 recommender on a tiny random-init T5 and a synthetic dataset."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from promptrec.evaluation.ranking import evaluate_recommender
from promptrec.models.p5.config import RunConfig
from promptrec.models.p5.model import P5Recommender
from promptrec.core.recommender import load_recommender

TINY = {
    "model.preset": "tiny",
    "train.epochs": 2,
    "train.batch_size": 32,
    "train.lr": 0.003,
    "train.val_users": 20,
    "eval.unconstrained_users": 10,
}


def tiny_config(**extra):
    return RunConfig().update({**TINY, "index.method": "random", **extra})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from conftest import cyclic_data

    from promptrec.data import leave_one_out

    split = leave_one_out(cyclic_data())
    rec = P5Recommender(tiny_config()).fit(split, output_dir=tmp_path_factory.mktemp("run"), progress=False)
    return rec, split


def test_fit_save_load_gives_identical_recommendations(fitted, tmp_path):
    rec, split = fitted
    users = list(split.test["user_id"][:6])
    before = rec.recommend(users, k=5)
    rec.save_pretrained(tmp_path / "model")
    loaded = load_recommender(tmp_path / "model")
    assert isinstance(loaded, P5Recommender)
    after = loaded.recommend(users, k=5)
    pd.testing.assert_frame_equal(before, after)
    meta = json.loads((tmp_path / "model" / "promptrec_config.json").read_text())
    assert meta["recommender"] == "p5" and "promptrec_version" in meta
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_recommend_contract(fitted):
    rec, split = fitted
    users = list(split.test["user_id"][:8])
    recs = rec.recommend(users, k=7)
    assert list(recs.columns) == ["user_id", "item_id", "score", "rank"]
    assert list(dict.fromkeys(recs["user_id"])) == users  # external ids, in the order asked
    catalogue = set(split.data.items.index)
    for u, g in recs.groupby("user_id", sort=False):
        assert len(g) == 7 and g["item_id"].is_unique
        assert list(g["rank"]) == list(range(1, 8))
        assert (np.diff(g["score"].to_numpy()) <= 1e-6).all()  # best first
        assert set(g["item_id"]) <= catalogue
        assert not set(g["item_id"]) & set(rec.history(u, "test"))  # history excluded


def test_explicit_history_changes_the_answer(fitted):
    rec, split = fitted
    u = split.test["user_id"][0]
    recs = rec.recommend([u], k=5, histories={u: ["item3", "item4"]})
    assert not {"item3", "item4"} & set(recs["item_id"])


def test_unknown_user_gets_an_answer(fitted):
    rec, _ = fitted
    recs = rec.recommend(["nobody"], k=3)
    assert len(recs) == 3


def test_evaluate_reports_full_ranking_and_invalid_rates(fitted):
    rec, split = fitted
    res, _ = evaluate_recommender(rec, split)
    for key in ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR", "eval_seconds", "eval_users"):
        assert key in res
    assert res["invalid_rate"] == 0.0 and res["history_violations"] == 0
    assert 0.0 <= res["unconstrained_invalid_rate"] <= 1.0
    assert res["eval_users"] == len(split.test)


def test_training_learns_the_cycle(tmp_path):
    """A known answer: users walk a cycle, so the next item is the successor of the last one."""
    from conftest import cyclic_data

    from promptrec.data import leave_one_out

    split = leave_one_out(cyclic_data(n_users=80, n_items=20))
    cfg = tiny_config(**{
        "train.epochs": 12, "train.patience": 12, "train.lr": 0.01, "train.batch_size": 16,
        "model.user_tokens": False, "index.params": {"levels": 1}, "eval.unconstrained_users": 0,
    })
    rec = P5Recommender(cfg).fit(split, progress=False)
    res, _ = evaluate_recommender(rec, split)
    # Ranking the ~13 unseen items at random would give HR@1 ~ 0.08.
    assert res["MRR"] > 0.5, res


def test_resume_continues_from_checkpoint(tmp_path):
    from conftest import cyclic_data

    from promptrec.data import leave_one_out

    split = leave_one_out(cyclic_data(n_users=20))
    P5Recommender(tiny_config(**{"train.epochs": 1})).fit(split, output_dir=tmp_path, progress=False)
    state = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())
    assert state["epoch"] == 0
    rec = P5Recommender(tiny_config(**{"train.epochs": 2})).fit(split, output_dir=tmp_path, resume=True, progress=False)
    assert rec.fit_info_["epochs_run"] == 2
    state = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())
    assert state["epoch"] == 1


def test_direct_and_rating_families(tmp_path):
    from promptrec.data import InteractionData, leave_one_out

    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{rng.integers(25)}", t, float(rng.integers(1, 6))) for u in range(30) for t in range(6)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]).drop_duplicates(["user_id", "item_id"])
    split = leave_one_out(InteractionData(df, pd.DataFrame({"item_id": [f"i{j}" for j in range(25)]})))
    weights = {"sequential": 1.0, "yesno": 1.0, "choose": 1.0, "rating": 1.0}
    rec = P5Recommender(tiny_config(**{"tasks.weights": weights, "train.epochs": 1})).fit(split, progress=False)
    p = rec.score(["u0", "u1"], ["i1", "i2"])
    assert p.shape == (2,) and ((p >= 0) & (p <= 1)).all()
    r = rec.predict_rating(["u0", "u1"], ["i1", "i2"])
    assert r.shape == (2,) and ((r >= 1) & (r <= 5)).all()
    res, _ = evaluate_recommender(rec, split)
    assert "sampled25_choose_HR@1" in res or any(k.startswith("sampled") for k in res)
    assert "yesno_AUC" in res and "rating_RMSE" in res and "rating_MAE" in res


def test_start_from_a_local_pretrained_directory(tmp_path, cyclic_split):
    """A local transformers directory (weights + tokenizer) is the starting point; its weights
    are kept, its tokenizer is extended with the item tokens."""

    from promptrec.backbones.builders import build_t5
    from promptrec.backbones.tokenization import build_tokenizer

    tok = build_tokenizer(["the user bought a thing next item history"], [], min_count=1)
    base = build_t5(len(tok), "tiny", pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    base.save_pretrained(tmp_path / "pre")
    tok.save_pretrained(str(tmp_path / "pre"))
    cfg = tiny_config(**{"model.pretrained": str(tmp_path / "pre")})
    rec = P5Recommender(cfg).build(cyclic_split)
    assert len(rec.tokenizer) == len(tok) + len(rec.indexer.tokens())
    assert rec.model.get_input_embeddings().weight.shape[0] == len(rec.tokenizer)
    before = base.encoder.block[0].layer[0].SelfAttention.q.weight
    assert torch.equal(rec.model.encoder.block[0].layer[0].SelfAttention.q.weight, before)
    rec.fit(cyclic_split, progress=False)
    out = rec.recommend([cyclic_split.test["user_id"][0]], k=3)
    assert len(out) == 3


def test_saved_directory_is_all_a_fresh_process_needs(fitted, tmp_path):
    """Serving loads the directory in a new process: nothing of the training run may be needed."""
    import subprocess
    import sys

    rec, split = fitted
    rec.save_pretrained(tmp_path / "model")
    user = split.test["user_id"][0]
    code = (
        "import sys; from promptrec.core.recommender import load_recommender; "
        f"r = load_recommender(sys.argv[1]); print(','.join(r.recommend([{user!r}], k=5)['item_id']))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ",".join(rec.recommend([user], k=5)["item_id"])


def test_same_seed_same_model(cyclic_split):
    """Seeds are fixed end to end: two runs of one config give the same recommendations."""
    cfg = tiny_config(**{"train.epochs": 1, "tasks.weights": {"sequential": 1.0, "yesno": 0.5}})
    users = list(cyclic_split.test["user_id"][:5])
    a = P5Recommender(cfg).fit(cyclic_split, progress=False).recommend(users, k=5)
    b = P5Recommender(cfg).fit(cyclic_split, progress=False).recommend(users, k=5)
    pd.testing.assert_frame_equal(a, b)
    c = P5Recommender(cfg.update({"train.seed": 1})).fit(cyclic_split, progress=False).recommend(users, k=5)
    assert not a.equals(c)


def test_p5_passes_the_recommender_contract(fitted, tmp_path):
    from conftest import assert_recommender_contract

    rec, split = fitted
    assert_recommender_contract(rec, split, tmp_path / "p5")


def test_a_diverging_run_stops_with_a_clear_error(cyclic_split, monkeypatch):
    """A NaN loss must not be trained through: the weights would turn to NaN and every ranking
    would come back empty (scored as HR 0) without a word."""

    real = torch.nn.CrossEntropyLoss.forward
    calls = {"n": 0}

    def poisoned(self, logits, target):
        calls["n"] += 1
        loss = real(self, logits, target)
        return loss * float("nan") if calls["n"] > 2 else loss  # from the third step on

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="training loss is nan at step 3 "):
        P5Recommender(tiny_config()).fit(cyclic_split, progress=False)


