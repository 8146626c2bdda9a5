"""Whole-sequence training of causal LMs: every history item is a target, one example per user,
and the exact one-pass ranking of single-token item ids."""

import numpy as np
import pandas as pd
import pytest
import torch

from promptrec.data import InteractionData, leave_one_out
from promptrec.evaluation.ranking import evaluate_recommender
from promptrec.models.p5.config import RunConfig
from promptrec.models.p5.model import P5Recommender
from promptrec.prompts.tasks import TASKS


def config(**extra):
    base = {
        "model.preset": "tiny", "model.backbone": "gpt2", "index.method": "random",
        "index.params": {"levels": 1}, "train.epochs": 1, "train.batch_size": 16,
        "train.val_users": 10, "eval.unconstrained_users": 0,
    }
    return RunConfig().update({**base, **extra})


@pytest.fixture(scope="module")
def split():
    from conftest import cyclic_data

    return leave_one_out(cyclic_data(n_users=30, n_items=20))


def test_history_items_of_the_prompt_become_targets(split):
    rec = P5Recommender(config()).build(split)
    tok = rec.tokenizer
    prompt, answer = "history : <a_1> <a_3> <a_2> next item :", "<a_7>"
    batch = rec.training_batch([prompt, prompt], [answer, answer], history=[True, False])
    ids = batch["input_ids"][0].tolist()
    item_ids = set(tok.convert_tokens_to_ids(["<a_1>", "<a_3>", "<a_2>", "<a_7>"]))
    dense = batch["targets"][0].tolist()
    # Position t predicts token t + 1: every item token after the first position, and the answer
    # and its end, are targets; nothing else is.
    expected = [
        ids[t + 1] if ids[t + 1] in item_ids or t + 1 >= len(tok(prompt)["input_ids"]) else -100
        for t in range(len(ids) - 1)
    ] + [-100]
    assert dense == expected
    assert sum(t != -100 for t in dense) == 5  # three history items, the answer, its EOS
    plain = batch["targets"][1].tolist()
    assert sum(t != -100 for t in plain) == 2


def test_history_targets_need_a_causal_lm(split):
    rec = P5Recommender(config(**{"model.backbone": "t5"})).build(split)
    with pytest.raises(ValueError, match="causal"):
        rec.training_batch(["history : <a_1>"], ["<a_2>"], history=[True])
    with pytest.raises(ValueError, match="causal backbone"):
        P5Recommender(config(**{"model.backbone": "t5", "train.history_loss": True})).fit(split, progress=False)


@pytest.mark.parametrize("backbone", ["gpt2", "llama"])
def test_target_only_output_layer_gives_the_full_loss(backbone, split):
    """The loss from hidden states gathered at the targets equals the loss over all logits."""
    rec = P5Recommender(config(**{"model.backbone": backbone})).build(split)
    rec.model.eval()  # the same dropout masks cannot be drawn twice
    prompts = ["history : <a_1> <a_3> <a_2> next item :", "history : <a_5> next item :"]
    batch = rec.training_batch(prompts, ["<a_7>", "<a_6>"], history=[True, True])
    targets = batch.pop("targets")
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
    logits = rec.model(**batch).logits
    full = loss_fn(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
    assert rec.lm.loss(rec.model, batch, targets, loss_fn).item() == pytest.approx(full.item(), rel=1e-5)


def test_whole_sequence_family_has_one_example_per_user_and_windows_long_histories():
    seqs = [["a", "b", "c"], ["d"], [str(i) for i in range(30)]]
    from promptrec.prompts.tasks import TaskContext

    ctx = TaskContext(
        sequences=seqs, users=["u0", "u1", "u2"], catalogue=sorted({i for s in seqs for i in s}),
        item_text=lambda i: f"<{i}>", user_text=lambda u: u, max_history=5,
    )
    fam = TASKS.get("sequence")(ctx)
    assert fam.size() == 2  # a one-item sequence has nothing to predict
    ex = fam.example(0, np.random.default_rng(0))
    assert ex == {"user": "u0", "history": "<a> <b>", "target": "<c>"}
    ends = set()
    for seed in range(200):
        ex = fam.example(1, np.random.default_rng(seed))
        shown = ex["history"].split()
        target = int(ex["target"].strip("<>"))
        # The window is the five items right before the target, in order.
        assert shown == [f"<{i}>" for i in range(target - 5, target)]
        ends.add(target)
    assert ends == set(range(5, 30))  # every position of the long sequence can be a target


def test_single_token_ids_rank_every_item_exactly(split):
    """With one token per item the top k is the full ranking by the next-token log-probability."""
    rec = P5Recommender(config()).fit(split, progress=False)
    assert rec.trie.code_length == 1
    users = list(split.test["user_id"][:3])
    hists = [rec.history(u) for u in users]
    hists[0] = hists[0][-1:]  # a shorter prompt: the others are padded against it
    prompts = rec.sequential_prompts(users, hists)
    everything = len(rec.catalogue())
    for prompt, hist, row in zip(prompts, hists, rec.generate_items(prompts, everything, excluded=hists)):
        assert len(row) == everything - len(set(hist))
        assert {i for i, _ in row} == set(rec.catalogue()) - set(hist)
        ids = rec.tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(rec.model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
        for item, score in row:
            token = rec.tokenizer.convert_tokens_to_ids(rec.indexer.codes[item][0])
            assert score == pytest.approx(logp[token].item(), abs=1e-4)
        assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)
    allowed = [rec.catalogue()[:3]] * len(prompts)
    for row in rec.generate_items(prompts, 10, allowed=allowed):
        assert {i for i, _ in row} == set(rec.catalogue()[:3])


@pytest.mark.parametrize("stride", [1, 3, 5])
def test_windows_ending_stride_apart_learn_every_position_once_after_enough_history(stride):
    from promptrec.prompts.tasks import TaskContext

    window, length = 5, 23
    seqs = [[str(i) for i in range(length)], ["a", "b", "c"]]
    ctx = TaskContext(
        sequences=seqs, users=["u0", "u1"], catalogue=sorted({i for s in seqs for i in s}),
        item_text=lambda i: f"<{i}>", user_text=lambda u: u, max_history=window, window_stride=stride,
    )
    fam = TASKS.get("sequence")(ctx)
    learned = []  # (position, items of the user's history before it in the example's prompt)
    for i in range(fam.size()):
        ex = fam.example(i, np.random.default_rng(i))
        if ex["user"] != "u0":
            assert ex["history"] == "<a> <b>" and fam.first_target(i) == 0  # short: as without windows
            continue
        shown = [int(t.strip("<>")) for t in ex["history"].split()]
        assert shown == list(range(shown[0], shown[0] + len(shown))) and len(shown) == min(window, shown[-1] + 1)
        learned += [(p, j) for j, p in enumerate(shown) if j >= fam.first_target(i)]
        learned.append((int(ex["target"].strip("<>")), len(shown)))
    positions = sorted(p for p, _ in learned)
    assert positions == list(range(length))  # every item a target once per epoch
    # Past the first window, every target reads at least window - stride + 1 items before it.
    assert all(context >= min(p, window - stride + 1) for p, context in learned)


def test_history_from_leaves_the_first_history_items_out_of_the_loss(split):
    rec = P5Recommender(config()).build(split)
    prompt, answer = "history : <a_1> <a_3> <a_2> <a_5> next item :", "<a_7>"
    batch = rec.training_batch([prompt, prompt], [answer, answer], history=[True, True], history_from=[0, 2])
    learned = [[t for t in row if t != -100] for row in batch["targets"].tolist()]
    tok = rec.tokenizer
    items = tok.convert_tokens_to_ids(["<a_1>", "<a_3>", "<a_2>", "<a_5>", "<a_7>"])
    assert learned[0] == [*items, tok.eos_token_id]
    assert learned[1] == [*items[2:], tok.eos_token_id]


def test_window_stride_needs_history_loss_and_fits_the_window():
    with pytest.raises(ValueError, match="history_loss"):
        config(**{"tasks.window_stride": 2})
    with pytest.raises(ValueError, match="at most model.max_history"):
        config(**{"tasks.window_stride": 30, "model.max_history": 20, "train.history_loss": True})


def test_whole_sequence_training_learns_the_cycle():
    """A known answer, as for the per-position recipe, from one example per user and epoch.

    Half the users walk 8 items and half 11: with a single length, the test prompt (two items
    longer than any training sequence) would put the answer at positions no training example
    reached, and a learned position embedding has nothing to go on there.
    """
    from conftest import cyclic_data

    short, long = cyclic_data(n_users=40, n_items=20, length=8), cyclic_data(n_users=40, n_items=20, length=11, seed=1)
    renamed = long.interactions.assign(user_id="long" + long.interactions["user_id"])
    split = leave_one_out(InteractionData(pd.concat([short.interactions, renamed], ignore_index=True), short.items))
    cfg = config(**{
        "tasks.weights": {"sequence": 1.0}, "train.history_loss": True, "train.epochs": 40,
        "train.patience": 40, "train.lr": 0.003, "train.schedule": "constant", "train.batch_size": 8,
    })
    rec = P5Recommender(cfg).fit(split, progress=False)
    assert rec.fit_info_["steps"] == 40 * 10  # 80 users, one example each, batches of 8
    res, _ = evaluate_recommender(rec, split)
    # Ranking the ~13 unseen items at random gives an MRR near 0.25.
    assert res["MRR"] > 0.6, res


def test_history_last_templates_put_the_last_item_right_before_the_answer(split):
    """The shipped ``history_last`` template set ends each prompt with the history: in training and
    in evaluation the answer follows the last history item and the prompt's ``</s>``, with no
    question words between."""

    path = "history_last"
    rec = P5Recommender(config(**{"model.templates": str(path)})).build(split)
    tok = rec.tokenizer
    tmpl = rec.templates.family("sequential")[0]
    hist = ["<a_1>", "<a_3>", "<a_2>"]
    prompt, answer = tmpl.render({"user": "the user", "history": " ".join(hist), "target": "<a_7>"})
    batch = rec.training_batch([prompt], [answer], history=[True])
    ids, targets = batch["input_ids"][0].tolist(), batch["targets"][0].tolist()
    end = ids.index(tok.convert_tokens_to_ids("<a_7>")) - 1  # the position that predicts the answer
    assert tok.convert_ids_to_tokens(ids[end - 3 : end + 1]) == [*hist, "</s>"]
    assert [t for t in targets if t != -100] == tok.convert_tokens_to_ids([*hist, "<a_7>", "</s>"])
    users = list(split.test["user_id"][:2])
    for p in rec.sequential_prompts(users, [rec.history(u) for u in users]):
        assert tok(p)["input_ids"][-2] in rec.item_token_ids


def test_without_prompt_eos_the_answer_continues_the_history(split, tmp_path):
    """``model.prompt_eos=false``: no ``</s>`` between a history-last prompt and its answer, in
    training batches, in evaluation prompts and in the saved tokenizer that serving loads."""

    path = "history_last"
    rec = P5Recommender(config(**{"model.templates": str(path), "model.prompt_eos": False})).fit(split, progress=False)
    tok = rec.tokenizer
    batch = rec.training_batch(["history : <a_1> <a_3>"], ["<a_7>"], history=[True])
    ids, targets = batch["input_ids"][0].tolist(), batch["targets"][0].tolist()
    assert tok.convert_ids_to_tokens(ids) == ["history", ":", "<a_1>", "<a_3>", "<a_7>"]
    # The answer is learned where each history item is, from the item just before it, and nothing
    # is learned after it: evaluation asks the last item's position for the next item, not an end.
    assert targets == [-100, *tok.convert_tokens_to_ids(["<a_1>", "<a_3>", "<a_7>"]), -100]
    rec.save_pretrained(tmp_path / "model")
    loaded = P5Recommender.from_pretrained(tmp_path / "model")
    users = list(split.test["user_id"][:2])
    for p in loaded.sequential_prompts(users, [loaded.history(u) for u in users]):
        assert loaded.tokenizer(p)["input_ids"][-1] in loaded.item_token_ids
    pd.testing.assert_frame_equal(loaded.recommend(users, k=3), rec.recommend(users, k=3))
    with pytest.raises(ValueError, match="prompt_eos"):
        P5Recommender(config(**{"model.prompt_eos": False, "model.pretrained": str(tmp_path)})).build(split)
    # Codes of different lengths need an </s> to end the shorter ones, which answers lack here.
    first = loaded.catalogue()[0]
    loaded.indexer.codes[first] = [*loaded.indexer.codes[first], loaded.indexer.codes[loaded.catalogue()[1]][0]]
    with pytest.raises(ValueError, match="one length"):
        loaded._build_trie()




def test_plateau_schedule_cuts_the_rate_and_stops_on_validation(split, monkeypatch):
    """``train.schedule=plateau``: validation decides when the rate is cut and when training
    stops; ``train.epochs`` is only a cap. Scripted validation scores make the answer known."""
    scores = iter([0.1, 0.2, 0.2, 0.1, 0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    monkeypatch.setattr(P5Recommender, "evaluate_users", lambda self, *a, **k: {"NDCG@10": next(scores), "HR@10": 0.0})
    rates, step = [], torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    cfg = config(**{
        "train.schedule": "plateau", "train.epochs": 50, "train.patience": 5, "train.decay_patience": 2,
        "train.decay_factor": 0.3, "train.warmup_ratio": 0.0, "train.lr": 0.01,
    })
    rec = P5Recommender(cfg).fit(split, progress=False)
    info = rec.fit_info_
    # Epoch 4 is the second without gain (cut), 5 improves, 7 and 9 cut again, 10 is the fifth
    # without gain since 5: stop, keeping epoch 5's weights.
    assert (info["epochs_run"], info["best_epoch"]) == (10, 5)
    assert info["final_lr_scale"] == pytest.approx(0.3**3)
    per_epoch = len(rates) // 10
    assert len(rates) == 10 * per_epoch
    expected = [0.01] * 4 + [0.003] * 3 + [0.0009] * 2 + [0.00027]
    assert rates == pytest.approx([r for r in expected for _ in range(per_epoch)])


def test_plateau_schedule_needs_patience_beyond_its_cut():
    with pytest.raises(ValueError, match="patience above"):
        config(**{"train.schedule": "plateau", "train.patience": 2, "train.decay_patience": 2})
