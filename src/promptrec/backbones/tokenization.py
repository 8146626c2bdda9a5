"""An offline tokenizer built from the training corpus.

No hub download is possible or wanted: the vocabulary is the template words plus the words of
item titles, categories and brands (most frequent first), the answer words, and whole tokens for
every item code and user. It is a ``transformers`` fast tokenizer, saved with the model.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
ANSWER_WORDS = ["yes", "no", "1", "2", "3", "4", "5", "none", "unknown", "title"]
_WORD = re.compile(r"\w+|[^\w\s]")


def words(texts: Iterable[str]) -> Counter:
    counts: Counter = Counter()
    for text in texts:
        counts.update(_WORD.findall(text.lower()))
    return counts


def build_tokenizer(
    corpus: Iterable[str],
    item_tokens: Sequence[str],
    user_tokens: Sequence[str] = (),
    max_words: int = 5000,
    min_count: int = 2,
    required: Iterable[str] = (),
    end_with_eos: bool = True,
) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: ids 0/1/2 are pad/eos/unk as T5 expects, then words, then added tokens.

    corpus: item text (titles, categories, brands) of the training catalogue; its most frequent
        words (at least ``min_count`` uses) fill the vocabulary up to ``max_words``.
    required: text whose every word is kept whatever its count (the templates: each appears once).
    item_tokens / user_tokens: whole tokens (``<a_12>``, ``<u_7>``) matched before splitting, so
        an item code is always exactly its tokens.
    end_with_eos: append ``</s>`` to every encoded text (prompts and answers alike).
    """
    counts = words(corpus)
    vocab_words = list(dict.fromkeys([*ANSWER_WORDS, *words(required)]))
    kept = set(vocab_words)
    vocab_words += [w for w, c in counts.most_common() if c >= min_count and w not in kept]
    vocab_words = vocab_words[: max(max_words, len(kept))]
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for w in vocab_words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens([AddedToken(t, normalized=False) for t in (PAD, EOS, UNK)])
    tk.add_tokens([AddedToken(t, normalized=False) for t in [*item_tokens, *user_tokens]])
    # Encoder inputs end with </s>, as in T5 pretraining. Without it, a causal LM whose prompt
    # ends with the history predicts the answer where it predicts every history item: right
    # after the item before. The choice is part of the saved tokenizer, so serving follows it.
    if end_with_eos:
        tk.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def add_tokens(tokenizer, item_tokens: Sequence[str], user_tokens: Sequence[str] = ()) -> int:
    """Extend a pretrained tokenizer (e.g. a local t5 or Gemma directory) with item and user tokens.

    Each new token takes the space before it (``lstrip``). A SentencePiece-style vocabulary would
    otherwise put a lone ``▁`` token between the items of a history, so that every history item
    is read after a space while the answer is asked for right after the last item: the position
    that predicts a history item and the one that predicts the answer would differ.
    """
    new = [AddedToken(t, normalized=False, lstrip=True) for t in [*item_tokens, *user_tokens]]
    return tokenizer.add_tokens(new)
