"""``train.exclude_history``: the items a prompt shows before a target leave that target's
training softmax, as ranking leaves the history out."""

from __future__ import annotations

import pytest
import torch
from conftest import cyclic_data

from promptrec.data import leave_one_out
from promptrec.models.p5.config import RunConfig
from promptrec.models.p5.lm import DECODER_ONLY, LMKind, seen_before
from promptrec.models.p5.model import P5Recommender
from promptrec.models.p5.training import train


def test_seen_before_marks_the_items_read_up_to_each_target() -> None:
    items = torch.zeros(12, dtype=torch.bool)
    items[[5, 7, 9]] = True
    # Position t predicts token t + 1; 3 is a word token, 0 padding.
    ids = torch.tensor([[5, 7, 5, 3, 9, 0], [9, 7, 0, 0, 0, 0]])
    targets = torch.tensor([[7, 5, -100, 9, -100, -100], [7, -100, -100, -100, -100, -100]])
    seen = seen_before(ids, targets, items)
    marked = [row.nonzero().flatten().tolist() for row in seen]
    # Row 0: 7 after {5}; 5 after {5, 7} (the repeated target stays in); 9 after {5, 7}, words
    # left alone. Row 1: its own target 7 is the item it reads, so nothing is left out.
    assert marked == [[5], [7], [5, 7], [9]]
    with pytest.raises(ValueError, match="line up"):
        seen_before(ids[:, :4], targets, items)


@pytest.fixture(scope="module")
def split():
    return leave_one_out(cyclic_data(n_users=30, n_items=20))


def config(**extra) -> RunConfig:
    return RunConfig().update({
        "model.preset": "tiny", "model.backbone": "gpt2", "model.max_history": 8, "model.templates": "history_last",
        "model.prompt_eos": False, "index.method": "random", "index.params": {"levels": 1},
        "tasks.weights": {"sequence": 1.0}, "train.history_loss": True, "train.epochs": 2, "train.batch_size": 8,
        "train.val_users": 10, "eval.unconstrained_users": 0, **extra,
    })


def test_loss_is_the_cross_entropy_over_the_items_not_seen(split) -> None:
    rec = P5Recommender(config()).build(split, progress=False)
    rec.model.eval()
    tokens = sorted(rec.item_token_ids)
    names = [rec.tokenizer.convert_ids_to_tokens(t) for t in tokens[:4]]
    prompt = "purchase history of u in order : " + " ".join(names[:3] + names[:1])
    batch = rec.training_batch([prompt], [names[3]], history=[True])
    targets = batch.pop("targets")
    items = torch.zeros(rec.model.config.vocab_size, dtype=torch.bool)
    items[tokens] = True
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    with torch.no_grad():
        got = rec.lm.loss(rec.model, batch, targets, loss_fn, seen_items=items)
        # The model's own forward (the path of soft prompts) agrees with the body-and-head path.
        generic = LMKind.loss(DECODER_ONLY, rec.model, batch, targets, loss_fn, seen_items=items)
        # By hand: each target's logits with the items its row read before it removed.
        logits = rec.model(**batch).logits[0]
        expected = 0.0
        ids = batch["input_ids"][0]
        for t in (targets[0] != -100).nonzero().flatten().tolist():
            target = int(targets[0, t])
            drop = {int(i) for i in ids[: t + 1] if int(i) in rec.item_token_ids} - {target}
            keep = [v for v in range(logits.size(1)) if v not in drop]
            expected += -torch.log_softmax(logits[t, keep], 0)[keep.index(target)]
        plain = rec.lm.loss(rec.model, batch, targets, loss_fn)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(generic, got, rtol=1e-5, atol=1e-5)
    assert got < plain  # the same targets against fewer rivals


def test_training_with_history_left_out(split, tmp_path) -> None:
    rec = P5Recommender(config(**{"train.exclude_history": True}))
    train(rec, split, output_dir=tmp_path / "run", progress=False)
    plain = P5Recommender(config())
    train(plain, split, output_dir=tmp_path / "plain", progress=False)
    assert not torch.equal(rec.model.get_input_embeddings().weight, plain.model.get_input_embeddings().weight)
    users = sorted(rec.train_history)[:5]
    assert len(rec.recommend(users, 3)) == 15
    # An encoder-decoder reads the history apart from its answer: refused in one line.
    t5 = P5Recommender(config(**{"model.backbone": "t5", "train.history_loss": False, "train.exclude_history": True}))
    with pytest.raises(ValueError, match="train.exclude_history needs a causal backbone"):
        train(t5, split, output_dir=tmp_path / "t5", progress=False)
