"""BLEU/ROUGE of generated text against references, checked against hand-computed values."""

import pytest

pytest.importorskip("sacrebleu", reason="BLEU/ROUGE come with the text-metrics extra")
pytest.importorskip("rouge_score", reason="BLEU/ROUGE come with the text-metrics extra")

from promptrec.evaluation.text import segment_rouge, text_overlap


def test_overlap_with_short_tags_by_hand():
    out = text_overlap(["a funny film with will ferrell"], ["funny, will ferrell"])
    # 13a tokens: hypothesis 6, reference "funny , will ferrell" 4; 3 unigrams match, the
    # hypothesis is the longer (no brevity penalty): BLEU-1 = 100 * 3/6.
    assert out["bleu1"] == pytest.approx(50.0)
    # ROUGE-1 (words only): recall 3/3, precision 3/6, F1 = 2 * 0.5 * 1 / 1.5.
    assert out["rouge1_recall"] == pytest.approx(1.0) and out["rouge1_f"] == pytest.approx(2 / 3)
    assert out["mean_words"] == 6 and out["mean_reference_words"] == 3


def test_identical_and_disjoint_text():
    same = text_overlap(["the quick brown fox jumps"], ["the quick brown fox jumps"])
    assert same["bleu"] == pytest.approx(100.0) and same["rougeL_f"] == pytest.approx(1.0)
    none = segment_rouge(["space opera"], ["romantic comedy"])
    assert none["rouge1_f"].tolist() == [0.0]
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        segment_rouge(["a", "b"], ["a"])
