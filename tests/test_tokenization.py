from promptrec.backbones.tokenization import build_tokenizer


def test_item_codes_are_whole_tokens_and_text_is_word_level():
    tok = build_tokenizer(["the user bought things", "the user likes things"], ["<a_1>", "<a_12>", "<b_3>"], ["<u_0>"], min_count=1)
    ids = tok("<u_0> bought <a_12><b_3> <a_1><b_3> things")["input_ids"]
    toks = tok.convert_ids_to_tokens(ids)
    assert toks == ["<u_0>", "bought", "<a_12>", "<b_3>", "<a_1>", "<b_3>", "things", "</s>"]
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1
    assert tok.convert_ids_to_tokens(tok("zebra")["input_ids"])[0] == "<unk>"


def test_tokenizer_round_trips_through_save(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = build_tokenizer(["a b c"], ["<a_1>"], min_count=1)
    tok.save_pretrained(str(tmp_path))
    again = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert again("<a_1> b")["input_ids"] == tok("<a_1> b")["input_ids"]


def test_every_template_word_is_in_the_vocabulary(cyclic_split):
    from promptrec.backbones.tokenization import words
    from promptrec.models.p5.config import RunConfig
    from promptrec.models.p5.model import P5Recommender

    rec = P5Recommender(RunConfig().update({"model.preset": "tiny", "index.method": "random"})).build(cyclic_split)
    vocab = rec.tokenizer.get_vocab()
    for t in rec.templates.templates:
        if t.family.startswith("chat") or t.family == "explanation":
            continue  # for general pretrained LLMs (llm recommender, explanations), not read by a P5 model
        for w in words([t.input]):
            if w not in "{}" and w not in {"user", "history", "target", "item", "title", "candidates", "answer", "rating"}:
                assert w in vocab, (t.id, w)
