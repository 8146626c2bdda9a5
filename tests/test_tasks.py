"""Training examples come from training interactions only: no held-out item reaches a prompt."""

import numpy as np

from promptrec.indexing import build_indexer
from promptrec.prompts.tasks import TASKS, TaskContext, length_batches, mixture_plan


def context(split, **kw):
    seqs = split.train_sequences()
    users = list(seqs)
    idx = build_indexer("random", seed=0).fit(seqs, list(split.data.items.index))
    return TaskContext(
        sequences=[seqs[u] for u in users], users=users, catalogue=list(idx.codes),
        item_text=idx.text, user_text=lambda u: f"<{u}>", **kw,
    ), idx


def test_held_out_items_never_in_training_examples(cyclic_split):
    ctx, idx = context(cyclic_split, train_candidates=5)
    held = {}
    for df in (cyclic_split.valid, cyclic_split.test):
        for u, i in zip(df["user_id"], df["item_id"]):
            held.setdefault(u, set()).add(idx.text(i))
    rng = np.random.default_rng(0)
    for name in ("sequential", "yesno"):
        fam = TASKS.get(name)(ctx)
        for i in range(fam.size()):
            ex = fam.example(i, rng)
            user = ex["user"].strip("<>")
            text = " ".join(v for k, v in ex.items() if k in ("history", "target") or (k == "item" and ex.get("answer") == "yes"))
            train_items = {idx.text(j) for j in cyclic_split.train_sequences()[user]}
            for code in held[user] - train_items:
                assert code not in text, (name, ex)


def test_sequential_examples_cover_every_training_position(cyclic_split):
    ctx, _ = context(cyclic_split)
    fam = TASKS.get("sequential")(ctx)
    assert fam.size() == sum(len(s) - 1 for s in ctx.sequences)


def test_mixture_plan_follows_weights_and_batches_cover_each_example_once(cyclic_split):
    ctx, _ = context(cyclic_split, train_candidates=5)
    fams = {n: TASKS.get(n)(ctx) for n in ("sequential", "yesno", "choose")}
    rng = np.random.default_rng(0)
    plan = mixture_plan(fams, {"sequential": 2.0, "yesno": 1.0, "choose": 1.0}, 400, rng)
    counts = {n: sum(f == n for f, _ in plan) for n in fams}
    assert counts == {"sequential": 200, "yesno": 100, "choose": 100}
    batches = length_batches(plan, fams, 32, rng, window=4)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(plan))) and max(len(b) for b in batches) <= 32
    # A window of one batch sorts nothing across batches: each batch is a run of the shuffled plan.
    random_batches = length_batches(plan, fams, 32, rng, window=1)
    assert sorted(sorted(b) for b in random_batches) == [list(range(j, min(j + 32, len(plan)))) for j in range(0, len(plan), 32)]
