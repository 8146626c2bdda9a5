"""Explanations: the grounding check on known sentences, and the Explainer end to end on a tiny
random-init Gemma 3 (its sentences are noise; what is checked is the plumbing)."""

import json

import pandas as pd
import pytest

from promptrec.models.llm.explain import CatalogueMentions, Explainer, _first_sentence, grounding_summary

ITEMS = pd.DataFrame(
    {
        "title": ["Toy Story (1995)", "Rock, The (1996)", "Heat (1995)", "Star Wars (1977)"],
        "categories": [["Animation", "Comedy"], ["Action"], ["Crime"], ["Sci-Fi", "Action"]],
        "year": [1995, 1996, 1995, 1977],
    },
    index=pd.Index(["1", "2", "3", "4"], name="item_id"),
)


def test_grounded_sentences_name_only_what_was_shown():
    m = CatalogueMentions(ITEMS)
    g = m.ground("Fans of Star Wars will enjoy The Rock, an action film from 1996.", shown_items=["4", "2"])
    assert g.grounded and g.named_items == ["4", "2"] and set(g.named_attributes) == {"action", "1996"}


def test_an_unshown_title_or_attribute_is_ungrounded():
    m = CatalogueMentions(ITEMS)
    g = m.ground("Like Toy Story, The Rock is a comedy.", shown_items=["2"])
    assert not g.grounded
    assert g.ungrounded_items == ["1"] and g.ungrounded_attributes == ["comedy"]
    # One-word titles are ordinary words ("heat"), not mentions.
    assert m.ground("It has real heat.", shown_items=["2"]).named_items == []


def test_summary_rates_and_first_sentence():
    assert _first_sentence(" it is fun. And more.\nnext") == "it is fun."
    rows = [
        {"explanation": "a b c", "grounded": True, "ungrounded_items": [], "ungrounded_attributes": [],
         "named_items": ["4"], "named_attributes": [], "seconds": 1.0},
        {"explanation": "", "grounded": False, "ungrounded_items": ["1"], "ungrounded_attributes": [],
         "named_items": ["1"], "named_attributes": [], "seconds": 3.0},
    ]
    s = grounding_summary(rows)
    assert s["hallucination_rate"] == 0.5 and s["empty_rate"] == 0.5 and s["seconds_per_explanation"] == 2.0
    assert s["mean_words"] == 1.5 and s["naming_rate"] == 1.0


def save_tiny_gemma(path):
    """A random-init one-layer Gemma 3 with a Gemma-like word-level tokenizer, saved at ``path``."""
    import torch
    from test_pretrained import gemma_like_tokenizer
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = gemma_like_tokenizer()
    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, pad_token_id=0,
                              eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(str(path))
    return path


def test_explainer_on_a_tiny_gemma_and_the_cli(tmp_path):
    from conftest import cyclic_data
    from typer.testing import CliRunner

    from promptrec.cli import app
    from promptrec.core.recommender import build_recommender
    from promptrec.data import leave_one_out

    llm = save_tiny_gemma(tmp_path / "llm")
    explainer = Explainer(str(llm), ITEMS, max_new_tokens=5)
    prompt = explainer.prompt(["4", "3"], "2")
    assert "Star Wars (1977); Heat (1995)" in prompt and "Rock, The (1996) (Action, 1996)" in prompt
    out = explainer.explain([(["4"], "2"), (["1"], "3")])
    assert [r["item_id"] for r in out] == ["2", "3"] and all(isinstance(r["explanation"], str) for r in out)
    with pytest.raises(Exception, match="not an explanation"):
        Explainer(str(llm), ITEMS, template="chat-1")

    split = leave_one_out(cyclic_data(n_users=10, n_items=20))
    model = build_recommender("popularity").fit(split)
    model.save_pretrained(tmp_path / "pop")
    res = CliRunner().invoke(app, ["recommend", "-m", str(tmp_path / "pop"), "-u", "user1", "-k", "2", "--json",
                                   "--explain", str(llm)])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(rows) == 2 and {"explanation", "grounded"} <= set(rows[0])


def write_tagged_movielens(path):
    """Three users; user 1 rated and tagged items 2 and 3 (twice on 3), user 2 tagged an item
    they never rated (not a pair), user 3 rated and tagged item 1 as their first rating."""
    path.mkdir()
    (path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                      "1,1,4.0,1\n1,2,3.0,2\n1,3,5.0,3\n1,4,2.0,4\n"
                                      "2,1,4.0,1\n2,2,4.0,2\n3,1,5.0,1\n3,4,3.0,2\n")
    (path / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n"
                                     "2,\"Rock, The (1996)\",Action\n3,Heat (1995),Crime\n4,Star Wars (1977),Sci-Fi|Action\n")
    (path / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,3,heist,10\n1,2,explosions,11\n1,3,al pacino,12\n"
                                   "1,3,heist,13\n2,4,space,14\n3,1,pixar,15\n")
    return path


def test_tags_protocol_pairs_references_and_baselines(tmp_path):
    from promptrec.data import load_dataset
    from promptrec.evaluation.explanations import baseline_texts, derangement, genre_sentence, tagged_pairs

    data = load_dataset("movielens", write_tagged_movielens(tmp_path / "ml"))
    pairs, counts = tagged_pairs(data, per_user=10, seed=0)
    got = {(r.user_id, r.item_id): (r.history, r.reference) for r in pairs.itertuples()}
    # Tags joined in time order without repeats; the history is what the user rated before.
    assert got == {("1", "3"): (["1", "2"], "heist, al pacino"), ("1", "2"): (["1"], "explosions"),
                   ("3", "1"): ([], "pixar")}
    assert counts["tagged_pairs"] == 4 and counts["tagged_and_rated_pairs"] == 3
    capped, _ = tagged_pairs(data, per_user=1, seed=0)
    assert sorted(capped["user_id"]) == ["1", "3"]  # one pair per user at most
    assert genre_sentence(data.items, "1") == "Toy Story (1995) is a animation, comedy film."
    p = derangement(5, seed=3)
    assert sorted(p) == list(range(5)) and all(p[i] != i for i in range(5))
    texts = baseline_texts(data.items, ["1", "3"], ["a.", "b."], seed=0)
    assert texts["title"] == ["Toy Story (1995)", "Heat (1995)"] and texts["other pair's sentence"] == ["b.", "a."]


def test_tags_protocol_cli_on_a_tiny_gemma(tmp_path):
    from typer.testing import CliRunner

    from promptrec.cli import app

    pytest.importorskip("sacrebleu")
    pytest.importorskip("rouge_score")
    data = write_tagged_movielens(tmp_path / "ml")
    llm = save_tiny_gemma(tmp_path / "llm")
    out = tmp_path / "tags.json"
    res = CliRunner().invoke(app, ["explain", "--data", str(data), "--llm", str(llm), "-o", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["pairs"]["explained"] == 3 and result["pairs"]["users"] == 2
    assert set(result["overlap"]) == {"llm", "title", "genre template", "other pair's sentence"}
    # The title baseline against these tags shares no word with them.
    assert result["overlap"]["title"]["rouge1_f"] == 0.0
    assert 0.0 <= result["grounding"]["hallucination_rate"] <= 1.0 and "| genre template |" in res.output
    res = CliRunner().invoke(app, ["explain", "--data", str(tmp_path / "nowhere"), "--llm", str(llm)])
    assert res.exit_code != 0
