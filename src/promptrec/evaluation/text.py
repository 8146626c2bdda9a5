"""Word overlap between generated text and user-written reference text: corpus BLEU (sacrebleu)
and ROUGE-1 / ROUGE-L (rouge-score), the standard implementations rather than our own.

What it measures: how many of the reference's words (and word n-grams) the generated text
contains. With short references, such as MovieLens tags ("funny", "will ferrell"), it is
overlap with a few keywords, not the quality of a sentence; compare it only with a baseline
scored the same way on the same references.

- ``bleu``: corpus BLEU-4 (sacrebleu defaults: 13a tokenisation, brevity penalty, no smoothing
  at corpus level), 0-100; ``bleu1``: the same with unigrams only.
- ``rouge1_f``, ``rouge1_recall``, ``rougeL_f``: means over segments of rouge-score's ROUGE-1
  F1 and recall and ROUGE-L F1 (lower-cased, Porter-stemmed words), 0-1. ROUGE-1 recall is
  the share of the reference's words that the text contains.

Needs ``pip install "promptrec[text-metrics]"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _libraries() -> tuple[Any, Any]:
    try:
        from rouge_score import rouge_scorer
        from sacrebleu.metrics import BLEU
    except ImportError:
        raise ValueError('BLEU/ROUGE need sacrebleu and rouge-score: pip install "promptrec[text-metrics]"') from None
    return BLEU, rouge_scorer


def segment_rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """Per segment: ``rouge1_f``, ``rouge1_recall``, ``rougeL_f`` of each hypothesis against its
    reference (arrays of len(hypotheses)), for paired comparisons between two generators."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    _, rouge_scorer = _libraries()
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    rows = [scorer.score(ref, hyp) for hyp, ref in zip(hypotheses, references)]  # score(target, prediction)
    return {
        "rouge1_f": np.array([r["rouge1"].fmeasure for r in rows]),
        "rouge1_recall": np.array([r["rouge1"].recall for r in rows]),
        "rougeL_f": np.array([r["rougeL"].fmeasure for r in rows]),
    }


def text_overlap(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-4 and BLEU-1 and mean ROUGE of ``hypotheses`` against one reference each."""
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    BLEU, _ = _libraries()
    refs = [list(references)]  # one reference stream
    rouge = segment_rouge(hypotheses, references)
    return {
        "segments": len(hypotheses),
        "bleu": float(BLEU().corpus_score(list(hypotheses), refs).score),
        "bleu1": float(BLEU(max_ngram_order=1).corpus_score(list(hypotheses), refs).score),
        **{name: float(values.mean()) for name, values in rouge.items()},
        "mean_words": float(np.mean([len(h.split()) for h in hypotheses])),
        "mean_reference_words": float(np.mean([len(r.split()) for r in references])),
    }


__all__ = ["segment_rouge", "text_overlap"]
