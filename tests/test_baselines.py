"""Every baseline under one contract, plus answers known by construction for each model.

The contract test runs each registered baseline, with a tiny config, on the cyclic data of
conftest.py (40 users walking a cycle of 30 items: train 6 items, then validation, then test), and
checks the ``recommend`` table, history exclusion per stage, cold start and the save/load round
trip. The known answers: item-kNN stays inside a user's community when communities share no item;
BPR and SASRec learn the cycle well enough to beat popularity; item-kNN's scores equal the cosine
sums computed by hand; SASRec's cross-entropy sees only real (non-padding) positions.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from conftest import assert_recommender_contract

from promptrec.core.recommender import (
    RECOMMENDERS,
    STAGES,
    build_recommender,
)
from promptrec.data import InteractionData, Split, leave_one_out
from promptrec.evaluation.ranking import evaluate_rankings

# Tiny configs: each fits the cyclic data in well under a second on one thread.
TINY = {
    "popularity": {},
    "itemknn": {"neighbours": 10},
    "bpr": {"factors": 8, "epochs": 3, "batch_size": 64, "progress": False},
    "sasrec": {"hidden": 16, "max_len": 5, "epochs": 3, "batch_size": 16, "progress": False},
    "bsarec": {"hidden": 16, "max_len": 5, "epochs": 3, "batch_size": 16, "progress": False},
    "biased_mf": {"factors": 8, "epochs": 3, "batch_size": 64, "progress": False},
}
# Explicit-feedback models: their contract case runs on the cyclic data with ratings added.
RATED = {"biased_mf"}
CASES = [
    *TINY.items(),
    ("sasrec", {**TINY["sasrec"], "loss": "bce", "heads": 2}),
    ("sasrec", {**TINY["sasrec"], "loss": "sampled", "num_negatives": 8}),
]
CASE_IDS = [
    "popularity", "itemknn", "bpr", "sasrec-ce", "bsarec", "biased_mf", "sasrec-bce", "sasrec-sampled",
]


def with_ratings(split: Split) -> Split:
    """``split``'s data with a 1-5 star rating on every interaction, split again the same way."""
    interactions = split.data.interactions
    stars = interactions["item_id"].str.removeprefix("item").astype(int) % 5 + 1
    return leave_one_out(InteractionData(interactions.assign(rating=stars), split.data.items))


def lists(recs: pd.DataFrame) -> dict[str, list[str]]:
    return {u: list(g) for u, g in recs.groupby("user_id", sort=False)["item_id"]}


def test_every_baseline_has_a_contract_case() -> None:
    import promptrec.models  # noqa: F401  (registers them)

    baselines = {
        name
        for name in RECOMMENDERS
        if RECOMMENDERS.get(name).__module__.startswith(("promptrec.models.classic.", "promptrec.models.sequential."))
    }
    assert baselines == set(TINY)


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_contract(name: str, params: dict, cyclic_split, tmp_path) -> None:
    if name in RATED:
        cyclic_split = with_ratings(cyclic_split)
    model = build_recommender(name, **params)
    assert model.fit(cyclic_split) is model
    assert_recommender_contract(model, cyclic_split, tmp_path / name)


@pytest.mark.parametrize("name", sorted(TINY))
def test_unfitted_and_bad_params(name: str) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        build_recommender(name).recommend(["u"])
    with pytest.raises(ValueError, match="unknown parameter 'no_such_param'"):
        build_recommender(name, no_such_param=1)  # misspelled keys fail, never silently ignored


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("itemknn", {"neighbours": 0}),
        ("bpr", {"factors": 0}),
        ("bpr", {"lr": -1.0}),
        ("sasrec", {"loss": "hinge"}),
        ("sasrec", {"hidden": 10, "heads": 3}),
        ("sasrec", {"dropout": 1.0}),
        ("sasrec", {"time_limit": 0}),
        ("bsarec", {"alpha": 1.5}),
        ("bsarec", {"c": -1}),
        ("bsarec", {"hidden": 10, "heads": 3}),
    ],
)
def test_invalid_values_are_rejected(name: str, params: dict) -> None:
    with pytest.raises(ValueError):
        build_recommender(name, **params)


# -- known answers -------------------------------------------------------------------------------
def two_communities() -> InteractionData:
    """40 users, each with 6 of their community's 10 items; communities "a" and "b" share none."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):
        group = "a" if u < 20 else "b"
        picked = rng.choice(10, size=6, replace=False)
        rows += [(f"{group}-user{u}", f"{group}{i}", t) for t, i in enumerate(picked)]
    items = pd.DataFrame({"item_id": [f"{g}{i}" for g in "ab" for i in range(10)]})
    return InteractionData(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]), items)


def test_itemknn_stays_in_the_community() -> None:
    split = leave_one_out(two_communities())
    model = build_recommender("itemknn").fit(split)
    users = list(split.test["user_id"])
    for stage in STAGES:
        recs = model.recommend(users, k=3, stage=stage)  # 4 or 5 unseen items in each community
        assert len(recs) == 3 * len(users)
        assert (recs["item_id"].str[0] == recs["user_id"].str[0]).all()
        assert (recs["score"] > 0).all()


def test_itemknn_scores_are_the_hand_computed_cosine_sums() -> None:
    # Two-item users stay wholly in training. Users of a = {u1, u3, u4}, b = {u1, u2},
    # c = {u2, u3}, d = {u4}.
    pairs = ["u1 a", "u1 b", "u2 b", "u2 c", "u3 a", "u3 c", "u4 a", "u4 d"]
    interactions = pd.DataFrame([p.split() for p in pairs], columns=["user_id", "item_id"])
    interactions["timestamp"] = range(len(pairs))
    split = leave_one_out(InteractionData(interactions, pd.DataFrame({"item_id": list("abcd")})))
    for shrinkage in (0.0, 1.0):
        model = build_recommender("itemknn", shrinkage=shrinkage).fit(split)
        scores = model.recommend(["u1"], k=2, stage="test").set_index("item_id")["score"]

        def cos(common: int, n_i: int, n_j: int) -> float:
            return common / (math.sqrt(n_i * n_j) + shrinkage)

        # u1 saw a, b: c scores sim(a,c) + sim(b,c), d scores sim(a,d) + sim(b,d) = sim(a,d).
        assert scores["c"] == pytest.approx(cos(1, 3, 2) + cos(1, 2, 2))
        assert scores["d"] == pytest.approx(cos(1, 3, 1))
    # One neighbour per item: a keeps only its best neighbour (d, 1/sqrt(3) > c, b 1/sqrt(6)).
    model = build_recommender("itemknn", neighbours=1).fit(split)
    assert model.similarity_.getnnz(axis=1).tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("bpr", {"factors": 16, "lr": 0.02, "epochs": 100, "batch_size": 64}),
        ("sasrec", {"hidden": 16, "dropout": 0.1, "lr": 5e-3, "epochs": 40, "batch_size": 64}),
        ("bsarec", {"hidden": 16, "dropout": 0.1, "lr": 5e-3, "epochs": 20, "batch_size": 64, "max_len": 8}),
    ],
    ids=["bpr", "sasrec-ce", "bsarec"],
)
def test_learners_beat_popularity_on_the_cycle(name: str, params: dict, cyclic_split) -> None:
    def hr5(model) -> float:
        return evaluate_rankings(model, cyclic_split, k=5, metrics=["HR@5"])[0]["HR@5"]

    popular = hr5(build_recommender("popularity").fit(cyclic_split))
    model = build_recommender(name, progress=False, **params).fit(cyclic_split)
    assert popular < 0.3  # the cycle has no popular items to exploit
    assert hr5(model) > popular + 0.4
    assert model.fit_info_["best_valid_NDCG@10"] > 0.5


@pytest.mark.parametrize("name", ["bpr", "sasrec", "bsarec"])
def test_training_is_seeded_and_leaves_the_global_rng_alone(name: str, cyclic_split) -> None:
    def run(seed: int) -> pd.DataFrame:
        model = build_recommender(name, seed=seed, **{**TINY[name], "epochs": 2})
        return model.fit(cyclic_split).recommend(list(cyclic_split.test["user_id"]), k=5)

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = run(0)
    assert torch.equal(torch.rand(3), expected)
    pd.testing.assert_frame_equal(first, run(0))
    assert not first.equals(run(1))


def test_sasrec_time_limit_validates_the_epoch_that_crosses_it(cyclic_split) -> None:
    # A limit shorter than any epoch: one epoch runs, is validated (though eval_every is larger)
    # and its weights are kept; a run without a limit goes on to its epoch budget.
    params = {**TINY["sasrec"], "epochs": 6, "eval_every": 5, "patience": 10}
    cut = build_recommender("sasrec", time_limit=1e-9, **params).fit(cyclic_split)
    assert cut.fit_info_["epochs_run"] == 1 and cut.fit_info_["best_epoch"] == 1
    assert cut.fit_info_["best_valid_NDCG@10"] is not None
    assert cut.fit_info_["stopped_by"] == "time_limit"
    full = build_recommender("sasrec", **params).fit(cyclic_split)
    assert full.fit_info_["epochs_run"] == 6 and full.fit_info_["stopped_by"] == "epochs"


@pytest.mark.parametrize("name", ["bpr", "sasrec"])
def test_without_validation_users_every_epoch_is_trained(name: str) -> None:
    # Two-item users only: nobody is evaluated, so there is nothing to stop early on.
    pairs = [(f"u{u}", f"i{(u + t) % 6}", t) for u in range(12) for t in range(2)]
    interactions = pd.DataFrame(pairs, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{n}" for n in range(6)]})
    split = leave_one_out(InteractionData(interactions, items))
    model = build_recommender(name, **{**TINY[name], "epochs": 4, "patience": 1}).fit(split)
    assert model.fit_info_["epochs_run"] == 4 and model.fit_info_["best_valid_NDCG@10"] is None
    assert len(model.recommend(["u0"], k=3)) == 3


def test_sasrec_ce_feeds_only_real_positions_to_the_softmax(cyclic_split, monkeypatch) -> None:
    from promptrec.models.sequential import sasrec

    rows: list[tuple[int, ...]] = []
    original = sasrec.SoftmaxCrossEntropy.__call__

    def spy(self, hidden: torch.Tensor, table: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        rows.append((hidden.shape[0], table.shape[0]))
        return original(self, hidden, table, target)

    monkeypatch.setattr(sasrec.SoftmaxCrossEntropy, "__call__", spy)

    # A hand-made batch: 3 + 6 + 1 real target positions out of 3 x 6.
    net = sasrec.SASRecNet(n_items=30, hidden=16, blocks=1, heads=1, dropout=0.0, max_len=6)
    inputs = torch.tensor([[0, 0, 0, 4, 5, 6], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 9]])
    targets = torch.tensor([[0, 0, 0, 5, 6, 7], [2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 0, 10]])
    loss = sasrec.sequence_loss(net, inputs, targets, loss="ce")
    assert rows == [(10, 30)]
    hidden = net(inputs)[targets > 0]  # (10, d)
    expected = F.cross_entropy(hidden @ net.item_emb.weight[1:].T, targets[targets > 0] - 1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)

    # Through fit: 40 users with 6 training items and max_len 3 -> 3 positions each, one batch.
    rows.clear()
    build_recommender("sasrec", hidden=16, max_len=3, epochs=1, batch_size=64, progress=False).fit(
        cyclic_split
    )
    assert rows == [(40 * 3, 30)]


def test_softmax_cross_entropy_matches_torch_in_value_and_gradients() -> None:
    from promptrec.models.sequential.sasrec import SoftmaxCrossEntropy

    torch.manual_seed(0)
    hidden = (3 * torch.randn(7, 5)).requires_grad_()
    table = torch.randn(11, 5, requires_grad=True)
    target = torch.tensor([0, 10, 3, 3, 7, 1, 9])
    fused = SoftmaxCrossEntropy()
    for rows in (7, 4):  # the second call reuses the (larger) buffer of the first
        loss = fused(hidden[:rows], table, target[:rows])
        grads = torch.autograd.grad(2 * loss, (hidden, table))
        reference = F.cross_entropy(hidden[:rows] @ table.T, target[:rows])
        expected = torch.autograd.grad(2 * reference, (hidden, table))
        assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # uniform logits: the loss is log(classes)
    zero = fused(torch.zeros(2, 5), table, torch.tensor([1, 2]))
    assert zero.item() == pytest.approx(np.log(11), rel=1e-6)


def test_pack_lays_sequences_side_by_side_and_changes_no_output() -> None:
    from promptrec.models.sequential.sasrec import SASRecNet, pack

    inputs = torch.tensor([[0, 0, 0, 4, 5, 6], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 9], [0, 0, 0, 0, 7, 8]])
    targets = torch.where(inputs > 0, inputs + 10, 0)
    items, packed_targets, positions, segments = pack(inputs, targets)
    # longest first, first fit: [seq 1] then [seq 0 | seq 3 | seq 2] in a row of 6
    assert items.tolist() == [[1, 2, 3, 4, 5, 6], [4, 5, 6, 7, 8, 9]]
    assert segments.tolist() == [[1] * 6, [0, 0, 0, 3, 3, 2]]
    assert positions.tolist() == [[0, 1, 2, 3, 4, 5], [3, 4, 5, 4, 5, 5]]
    assert torch.equal(packed_targets, torch.where(items > 0, items + 10, 0))

    torch.manual_seed(0)
    net = SASRecNet(n_items=30, hidden=16, blocks=2, heads=2, dropout=0.0, max_len=6).eval()
    with torch.no_grad():
        padded, packed = net(inputs), net(items, positions, segments)
    for row, col in zip(*torch.nonzero(items, as_tuple=True)):
        seq, pos = segments[row, col], positions[row, col]
        torch.testing.assert_close(packed[row, col], padded[seq, pos], rtol=1e-5, atol=1e-5)


def test_sasrec_encoder_is_causal_and_ignores_padding() -> None:
    from promptrec.models.sequential.sasrec import SASRecNet

    torch.manual_seed(0)
    net = SASRecNet(n_items=30, hidden=16, blocks=2, heads=2, dropout=0.0, max_len=6).eval()
    seqs = torch.tensor([[0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7]])
    changed = seqs.clone()
    changed[0, 4] = 9
    with torch.no_grad():
        out, out_changed = net(seqs), net(changed)
    assert torch.isfinite(out).all()  # padding queries see themselves: no NaN rows
    assert torch.equal(out[0, :4], out_changed[0, :4])  # earlier positions never see later items
    assert not torch.allclose(out[0, 4:], out_changed[0, 4:])


# -- BSARec --------------------------------------------------------------------------------------
def test_frequency_mix_known_answers() -> None:
    from promptrec.models.sequential.bsarec import frequency_mix

    torch.manual_seed(0)
    x = torch.randn(3, 8, 4)  # (B, L, d); L = 8 has 5 real-FFT frequencies
    beta = torch.randn(1, 1, 4)
    # every frequency kept: the low-pass part is x itself, the high-pass part is 0
    torch.testing.assert_close(frequency_mix(x, 5, beta), x, rtol=1e-5, atol=1e-5)
    # beta = 1: low + (x - low) for any cut-off
    torch.testing.assert_close(frequency_mix(x, 1, torch.ones(1)), x, rtol=1e-5, atol=1e-5)
    # beta = 0, only the mean kept: every position becomes the sequence mean
    mean = x.mean(dim=1, keepdim=True).expand_as(x)
    torch.testing.assert_close(frequency_mix(x, 1, torch.zeros(1)), mean, rtol=1e-5, atol=1e-5)
    # an alternating sequence is the highest frequency: a low-pass filter removes it, beta scales it
    alternating = torch.tensor([1.0, -1.0] * 4)[None, :, None].expand(1, 8, 4)
    half = torch.full((1, 1, 4), 0.5)
    torch.testing.assert_close(frequency_mix(alternating, 4, half), 0.25 * alternating)


def test_low_pass_matrix_is_the_fft_filter() -> None:
    from promptrec.backbones.frequency import low_pass_matrix
    from promptrec.models.sequential.bsarec import frequency_mix

    torch.manual_seed(0)
    x = torch.randn(3, 50, 4, dtype=torch.float64)
    spectrum = torch.fft.rfft(x, dim=1, norm="ortho")
    spectrum[:, 3:] = 0
    low = torch.fft.irfft(spectrum, n=50, dim=1, norm="ortho")
    matrix = low_pass_matrix(50, 3)
    torch.testing.assert_close(torch.einsum("ij,bjd->bid", matrix, x), low)
    torch.testing.assert_close(matrix @ matrix, matrix)  # a projection, of rank 2 * 3 - 1
    assert torch.linalg.matrix_rank(matrix).item() == 5
    beta = torch.randn(1, 1, 4, dtype=torch.float64)
    whole = frequency_mix(x, 3, beta)
    torch.testing.assert_close(whole, low + beta**2 * (x - low))
    torch.testing.assert_close(frequency_mix(x, 3, beta, last_only=True), whole[:, -1:])


def test_rand_dropout_keeps_the_expectation() -> None:
    from promptrec.models.sequential.bsarec import RandDropout

    torch.manual_seed(0)
    layer = RandDropout(0.3)
    x = torch.ones(200_000)
    out = layer(x)
    kept = out > 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.7))
    assert abs(out.mean().item() - 1.0) < 0.01
    x.requires_grad_(True)
    out = layer(x)
    out.sum().backward()  # x is ones, so out is the mask: d(x * keep)/dx = keep
    torch.testing.assert_close(x.grad, out.detach())
    assert torch.equal(layer.eval()(x), x)


def test_bsarec_filter_layer_with_every_frequency_is_the_residual_norm_of_2x() -> None:
    from promptrec.models.sequential.bsarec import FrequencyFilter

    torch.manual_seed(0)
    layer = FrequencyFilter(hidden=4, c=8, dropout=0.0)  # c // 2 + 1 = 5 >= 8 // 2 + 1
    x = torch.randn(2, 8, 4)
    torch.testing.assert_close(layer(x), layer.norm(2 * x))


def test_bsarec_prefix_examples_and_causal_state() -> None:
    from promptrec.models.sequential.bsarec import BSARecNet

    model = build_recommender("bsarec", max_len=3)
    inputs, targets = model._examples([np.array([5, 6, 7, 8, 9]), np.array([1]), np.array([2, 3])])
    assert inputs.tolist() == [[0, 0, 5], [0, 5, 6], [5, 6, 7], [6, 7, 8], [0, 0, 2]]
    assert targets[:, 0].tolist() == [6, 7, 8, 9, 3]

    # an earlier item changes the state after the last one (the filter and attention see it);
    # rows stay independent; the last-position shortcut gives the full pass's last state
    torch.manual_seed(0)
    net = BSARecNet(n_items=30, hidden=16, blocks=2, heads=2, dropout=0.0, max_len=6, alpha=0.7, c=3).eval()
    seqs = torch.tensor([[0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7]])
    changed = seqs.clone()
    changed[0, 2] = 9
    with torch.no_grad():
        out, out_changed = net(seqs), net(changed)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0, -1], out_changed[0, -1])
    torch.testing.assert_close(out[1], out_changed[1])
    with torch.no_grad():
        last = net(seqs, last_only=True)
    assert last.shape == (2, 1, 16)
    torch.testing.assert_close(last[:, 0], out[:, -1], rtol=1e-5, atol=1e-5)


def test_sasrec_padding_keys_are_one_key_weighted_by_their_count() -> None:
    # The reference port attends over the whole left-padded row: each padding position (zero
    # input) is the key bias with the value bias. PaddedAttention must give the same outputs.
    from promptrec.models.sequential.sasrec import PaddedAttention

    torch.manual_seed(0)
    attn = PaddedAttention(hidden=8, heads=2, dropout=0.0).eval()
    for layer in (attn.key, attn.value):
        nn.init.normal_(layer.bias)
    lengths = torch.tensor([3, 6, 1])
    x = torch.randn(3, 6, 8) * (torch.arange(6) >= 6 - lengths[:, None])[..., None]  # zero padding
    later = torch.ones(6, 6, dtype=torch.bool).triu(1)
    real = torch.arange(6) >= 6 - lengths[:, None]  # (B, L)
    blocked = later | (real[:, :, None] != real[:, None, :])
    padding = (6 - lengths)[:, None].expand(3, 6)
    with torch.no_grad():
        got = attn(x, x, blocked, padding)
        q, k, v = (f(x).view(3, 6, 2, 4).transpose(1, 2) for f in (attn.query, attn.key, attn.value))
        weights = (q @ k.transpose(-1, -2) / 2).masked_fill(later, -torch.inf).softmax(-1)
        want = attn.out((weights @ v).transpose(1, 2).reshape(3, 6, 8))
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)
