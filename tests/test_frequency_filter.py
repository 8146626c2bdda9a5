"""The BSARec-style frequency branch in a decoder-only LM (``model.frequency_filter``): BSARec's
filter at every position, causal, blind to padding, trained, and saved with the model."""

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from promptrec.backbones.frequency import (
    add_frequency_filter,
    causal_low_pass_kernel,
    causal_low_pass_matrix,
    low_pass_matrix,
)
from promptrec.data import leave_one_out
from promptrec.models.p5.config import RunConfig
from promptrec.models.p5.model import P5Recommender


def causal_low_pass(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """(B, T, d) -> (B, T, d) through the band matrix the hooks apply."""
    return causal_low_pass_matrix(x.shape[1], kernel.to(x)) @ x


def test_each_position_is_filtered_as_bsarec_filters_the_last_of_its_window():
    torch.manual_seed(0)
    window, keep = 6, 3
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    got = causal_low_pass(x, causal_low_pass_kernel(window, keep))
    projection = low_pass_matrix(window, keep)
    for t in range(x.shape[1]):
        # BSARec's input: the prefix ending at t, its last `window` items, zeros on the left.
        seen = x[:, max(0, t - window + 1) : t + 1]
        padded = torch.cat([torch.zeros(2, window - seen.shape[1], 4, dtype=x.dtype), seen], dim=1)
        torch.testing.assert_close(got[:, t], (projection @ padded)[:, -1], rtol=0, atol=1e-12)


def test_keeping_every_frequency_is_the_identity():
    x = torch.randn(1, 7, 3, dtype=torch.float64)
    torch.testing.assert_close(causal_low_pass(x, causal_low_pass_kernel(5, 5 // 2 + 1)), x)


def _tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=30, n_embd=16, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=1, eos_token_id=1, pad_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    add_frequency_filter(model, alpha=0.7, keep=3, window=8, dropout=0.0)
    return model.eval()


def test_the_branch_is_causal_and_changes_the_output():
    model = _tiny_gpt2()
    ids = torch.randint(3, 30, (1, 10))
    later = ids.clone()
    later[0, 7:] = 5
    with torch.no_grad():
        a, b = model(ids).logits, model(later).logits
        beta = model.transformer.h[0].attn.filter_beta
        beta.zero_()  # low-pass only: a different mix, so the branch is really in the output
        c = model(ids).logits
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-3
    assert (a - c).abs().max() > 1e-3


def test_left_padding_changes_nothing():
    model = _tiny_gpt2()
    ids = torch.randint(3, 30, (1, 10))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain = model(ids).logits
        left = model(padded, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    torch.testing.assert_close(left[:, 3:], plain, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def split():
    from conftest import cyclic_data

    return leave_one_out(cyclic_data(n_users=30, n_items=20))


def config(**extra) -> RunConfig:
    return RunConfig().update({
        "model.preset": "tiny", "model.backbone": "gpt2", "model.max_history": 8, "model.frequency_filter": 0.7,
        "model.templates": "history_last", "model.prompt_eos": False, "index.method": "random",
        "index.params": {"levels": 1}, "tasks.weights": {"sequence": 1.0}, "train.history_loss": True,
        "train.epochs": 1, "train.batch_size": 8, "train.val_users": 10, "eval.unconstrained_users": 0, **extra,
    })


def test_beta_learns_and_is_saved_with_the_model(split, tmp_path):
    rec = P5Recommender(config()).build(split)
    batch = rec.training_batch(["purchase history of u in order : <a_1> <a_3> <a_2>"], ["<a_7>"], history=[True])
    targets = batch.pop("targets")
    rec.lm.loss(rec.model, batch, targets, torch.nn.functional.cross_entropy).backward()
    assert all(layer.attn.filter_beta.grad.abs().max() > 0 for layer in rec.model.transformer.h)

    rec.fit(split, progress=False)
    users = sorted(rec.train_history)[:10]
    before = rec.recommend(users, k=5)
    rec.save_pretrained(tmp_path / "m")
    loaded = P5Recommender.from_pretrained(tmp_path / "m")
    for mine, theirs in zip(rec.model.transformer.h, loaded.model.transformer.h):
        torch.testing.assert_close(theirs.attn.filter_beta, mine.attn.filter_beta.detach(), rtol=0, atol=0)
    after = loaded.recommend(users, k=5)
    assert after["item_id"].tolist() == before["item_id"].tolist()


def test_needs_a_decoder_and_full_tuning(split):
    with pytest.raises(ValueError, match="decoder-only"):
        P5Recommender(config(**{"model.backbone": "t5", "model.templates": "p5", "model.prompt_eos": True,
                                "train.history_loss": False})).build(split)


def test_served_on_onnx_runtime_as_in_torch(split, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'promptrec[onnx]')")
    rec = P5Recommender(config()).build(split)
    users = sorted(rec.train_history)[:12]
    # Histories of different lengths, so the batch is left-padded and the branch must ignore it.
    histories = {u: rec.history(u)[-(2 + n % 6):] for n, u in enumerate(users)}
    before = rec.recommend(users, k=10, histories=histories)
    rec.use_runtime("onnx", cache_dir=tmp_path)
    after = rec.recommend(users, k=10, histories=histories)
    assert after["item_id"].tolist() == before["item_id"].tolist()
    np.testing.assert_allclose(after["score"], before["score"], atol=1e-4)


def test_decoding_with_a_generation_cache_is_refused():
    # A cache step feeds only the new token, which the branch cannot filter as it was trained.
    model = _tiny_gpt2()
    ids = torch.randint(3, 30, (1, 6))
    with torch.no_grad():
        model.generate(ids, max_new_tokens=1, do_sample=False)  # one step: the whole prompt, allowed
        with pytest.raises(ValueError, match="generation cache"):
            model.generate(ids, max_new_tokens=3, do_sample=False)


def test_items_of_several_tokens_are_refused(split):
    with pytest.raises(ValueError, match="one token per item"):
        P5Recommender(config(**{"index.params": {"levels": 2}})).build(split)


def test_export_for_a_chat_server_is_refused(split, tmp_path):
    # A plain transformers GPT-2 would load the weights and silently drop the branch.
    from promptrec.models.p5.export import export_chat_model

    rec = P5Recommender(config()).build(split)
    rec.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="frequency branch"):
        export_chat_model(tmp_path / "m", tmp_path / "chat")


def test_the_cutoff_sets_the_kernel_and_is_kept_with_the_model(split, tmp_path):
    # BSARec's c: c // 2 + 1 frequencies of the max_history window (8) are kept.
    rec = P5Recommender(config(**{"model.frequency_cutoff": 3, "train.epochs": 0})).build(split)
    want = causal_low_pass_kernel(8, 2).float()
    for layer in rec.model.transformer.h:
        torch.testing.assert_close(layer.attn.filter_kernel, want, rtol=0, atol=0)
    assert not torch.allclose(want, causal_low_pass_kernel(8, 5 // 2 + 1).float())  # not the default's
    rec.save_pretrained(tmp_path / "m")
    loaded = P5Recommender.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(loaded.model.transformer.h[0].attn.filter_kernel, want, rtol=0, atol=0)


def test_a_cutoff_that_keeps_every_frequency_is_refused():
    config(**{"model.frequency_cutoff": 7})  # 4 of the window's 5 frequencies
    with pytest.raises(ValueError, match="model.frequency_cutoff 8 keeps every frequency .* at most 7"):
        config(**{"model.frequency_cutoff": 8})
    config(**{"model.frequency_cutoff": 8, "model.frequency_filter": 0.0})  # no branch, nothing to check
    with pytest.raises(ValueError, match="a window of one item has nothing to filter"):
        config(**{"model.max_history": 1})
