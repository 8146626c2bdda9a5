"""Why an item was recommended, in one sentence written by a pretrained LLM, and whether the
sentence is grounded.

The LLM (a local transformers directory or a packaged model such as ``gemma-3-270m``) is shown
the user's recent items and the recommended item with its attributes (template family
``explanation`` in the prompt file) and continues with the reason. Small LLMs invent: an
explanation is **grounded** when every catalogue title and every attribute value it names is one
the prompt showed (a history item or the recommended item, their categories, brand, year);
:func:`grounding` finds those mentions, and :meth:`Explainer.explain` reports each sentence with
what it names that was not shown.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...evaluation.explanations import baseline_texts, score_against_references, tagged_pairs
from ...prompts.templates import TemplateSet

if TYPE_CHECKING:
    from ...data import InteractionData

ATTRIBUTE_COLUMNS = ("categories", "brand", "year")
_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
_WORD = re.compile(r"[a-z0-9']+")


def _values(value: Any) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if str(v).strip()]
    if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
        return []
    return [str(value)]


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _name(title: str) -> str:
    """A title as a sentence names it: lower case, no trailing ``(1995)``, ``Rock, The`` -> ``the rock``."""
    base = _YEAR.sub("", title)
    m = re.match(r"^(.*), (The|A|An|Les|La|Le|Il|Das|Die|El)$", base)
    if m:
        base = f"{m.group(2)} {m.group(1)}"
    return _norm(base)


@dataclass
class Grounding:
    named_items: list[str] = field(default_factory=list)  # catalogue items the sentence names
    named_attributes: list[str] = field(default_factory=list)
    ungrounded_items: list[str] = field(default_factory=list)  # named but not shown
    ungrounded_attributes: list[str] = field(default_factory=list)

    @property
    def grounded(self) -> bool:
        return not self.ungrounded_items and not self.ungrounded_attributes


class CatalogueMentions:
    """Finds the catalogue titles and attribute values a sentence names.

    Titles are matched as whole words after normalisation; titles of fewer than two words or
    eight letters ("Heat", "Go") are ignored, as they are ordinary words far more often than
    mentions. Attribute values (categories, brands, years) are matched as whole words too.
    """

    def __init__(self, items: pd.DataFrame) -> None:
        titles = items["title"].dropna().astype(str) if "title" in items else pd.Series(dtype=str)
        self.names: dict[str, str] = {}
        for item, title in titles.items():
            name = _name(title)
            if len(name.split()) >= 2 or len(name) >= 8:
                self.names.setdefault(name, str(item))
        self.attributes: dict[str, list[str]] = {}
        values: set[str] = set()
        for item, row in items.iterrows():
            found = [v for c in ATTRIBUTE_COLUMNS if c in items for v in _values(row[c])]
            self.attributes[str(item)] = found
            values.update(_norm(v) for v in found)
        self.values = {v for v in values if v}
        # One alternation per kind: a sentence is scanned once, not once per title.
        self._title_re = self._pattern(self.names)
        self._value_re = self._pattern(self.values)

    @staticmethod
    def _pattern(words: Any) -> re.Pattern | None:
        ordered = sorted(words, key=len, reverse=True)  # the longest name wins an overlap
        return re.compile(r"\b(" + "|".join(map(re.escape, ordered)) + r")\b") if ordered else None

    def ground(self, sentence: str, shown_items: Sequence[str]) -> Grounding:
        text = _norm(sentence)
        shown = {str(i) for i in shown_items}
        shown_values = {_norm(v) for i in shown for v in self.attributes.get(i, [])}
        out = Grounding()
        for name in dict.fromkeys(self._title_re.findall(text) if self._title_re else []):
            item = self.names[name]
            out.named_items.append(item)
            if item not in shown:
                out.ungrounded_items.append(item)
        for value in dict.fromkeys(self._value_re.findall(text) if self._value_re else []):
            out.named_attributes.append(value)
            if value not in shown_values:
                out.ungrounded_attributes.append(value)
        return out


class Explainer:
    """One-sentence explanations of recommendations from a pretrained causal LM.

    Args:
        model: a local transformers directory, a ``.gguf`` file or a packaged model name.
        items: the catalogue (title and attribute columns), e.g. a recommender's ``item_table()``.
        template: the ``explanation`` template id; ``templates``: a template file (default
            promptrec's own).
        max_history: the most recent items shown; ``max_new_tokens``: the sentence's length bound.
    """

    def __init__(self, model: str, items: pd.DataFrame, template: str = "explain-1", templates: str | None = None,
                 max_history: int = 5, max_new_tokens: int = 40, batch_size: int = 8, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ...pretrained import resolve_model

        path = resolve_model(model, "explanation model")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        if device:
            self.model.to(device)
        self.template = TemplateSet.load(templates).get(template)
        if self.template.family != "explanation":
            raise ValueError(f"template {template!r} is a {self.template.family!r} template, not an explanation")
        self.items = items
        self.mentions = CatalogueMentions(items)
        self.max_history, self.max_new_tokens, self.batch_size = max_history, max_new_tokens, batch_size
        self._torch = torch

    def _title(self, item: str) -> str:
        if "title" in self.items and item in self.items.index and isinstance(self.items.at[item, "title"], str):
            return self.items.at[item, "title"]
        return item

    def prompt(self, history: Sequence[str], item: str) -> str:
        shown = [self._title(i) for i in list(history)[-self.max_history :]]
        attributes = ", ".join(self.mentions.attributes.get(str(item), [])) or "no details"
        return self.template.render_input({
            "history": "; ".join(shown) or "nothing yet", "title": self._title(item), "attributes": attributes,
        })

    def explain(self, pairs: Sequence[tuple[Sequence[str], str]]) -> list[dict[str, Any]]:
        """For each (history, recommended item): the sentence, the seconds it took (its batch's
        share) and its grounding."""
        out: list[dict[str, Any]] = []
        tok = self.tokenizer
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start : start + self.batch_size]
            t0 = time.perf_counter()
            prompts = [self.prompt(h, i) for h, i in batch]
            enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left").to(self.model.device)
            with self._torch.inference_mode():
                gen = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          pad_token_id=tok.pad_token_id)
            texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            seconds = (time.perf_counter() - t0) / len(batch)
            for (history, item), text in zip(batch, texts):
                sentence = _first_sentence(text)
                shown = [*list(history)[-self.max_history :], item]
                g = self.mentions.ground(sentence, shown)
                out.append({
                    "item_id": str(item), "explanation": sentence, "seconds": round(seconds, 3), "grounded": g.grounded,
                    "named_items": g.named_items, "named_attributes": g.named_attributes,
                    "ungrounded_items": g.ungrounded_items, "ungrounded_attributes": g.ungrounded_attributes,
                })
        return out


def _first_sentence(text: str) -> str:
    """The continuation up to its first sentence end or line break, trimmed."""
    text = text.strip().split("\n")[0]
    m = re.search(r"[.!?](\s|$)", text)
    return (text[: m.start() + 1] if m else text).strip()


def grounding_summary(results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Hallucination rate (explanations naming anything not shown), mentions and length."""
    n = len(results)
    if not n:
        return {"explanations": 0}
    return {
        "explanations": n,
        "hallucination_rate": sum(not r["grounded"] for r in results) / n,
        "ungrounded_item_rate": sum(bool(r["ungrounded_items"]) for r in results) / n,
        "ungrounded_attribute_rate": sum(bool(r["ungrounded_attributes"]) for r in results) / n,
        "naming_rate": sum(bool(r["named_items"] or r["named_attributes"]) for r in results) / n,
        "mean_words": float(np.mean([len(r["explanation"].split()) for r in results])),
        "empty_rate": sum(not r["explanation"] for r in results) / n,
        "seconds_per_explanation": float(np.mean([r["seconds"] for r in results])),
    }


def evaluate_against_tags(
    explainer: Explainer, data: InteractionData, per_user: int = 10, seed: int = 0, limit: int | None = None,
    time_limit: float | None = None, progress: bool = False,
) -> dict[str, Any]:
    """The tags protocol (:mod:`promptrec.evaluation.explanations`): explain every sampled pair
    the user rated and tagged, then BLEU/ROUGE against the user's tags beside the baselines,
    paired tests, and the grounding summary.

    ``limit``: explain at most this many pairs; ``time_limit``: stop starting batches after this
    many seconds and score what is done (the pairs come in a seeded shuffled order, so a cut
    sample still spans the users; the result says ``cut_by_time_limit``).
    """
    from tqdm.auto import tqdm

    pairs, counts = tagged_pairs(data, per_user, seed)
    if limit is not None:
        pairs = pairs.iloc[:limit]
    drawn = len(pairs)
    work = list(zip(pairs["history"], pairs["item_id"]))
    found: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = tqdm(total=len(work), desc="explain", unit="pair", disable=not progress)
    for start in range(0, len(work), explainer.batch_size):
        if time_limit is not None and time.perf_counter() - started > time_limit:
            break
        found.extend(explainer.explain(work[start : start + explainer.batch_size]))
        bar.update(len(found) - bar.n)
    bar.close()
    wall = time.perf_counter() - started
    pairs = pairs.iloc[: len(found)]
    if pairs.empty:
        raise ValueError("no pair was explained (time limit too short?)")
    texts = baseline_texts(explainer.items, pairs["item_id"].tolist(), [r["explanation"] for r in found], seed)
    scores = score_against_references(texts, pairs["reference"].tolist(), seed)
    return {
        "what": "BLEU/ROUGE of one-sentence explanations against the user's own tags on the explained movie "
                "(overlap with short keywords, not sentence quality), beside baselines scored the same way",
        "data": data.name,
        "pairs": {**counts, "drawn": drawn, "explained": len(pairs), "cut_by_time_limit": len(pairs) < drawn,
                  "users": int(pairs["user_id"].nunique()),
                  "empty_history": int((pairs["history"].str.len() == 0).sum()),
                  "largest_user_share": round(float(pairs["user_id"].value_counts().iloc[0] / len(pairs)), 3)},
        **scores,
        "grounding": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in grounding_summary(found).items()},
        "wall_seconds": round(wall, 1),
        "examples": [{"user_id": u, "item_id": i, "reference": ref, "prompt": explainer.prompt(h, i), **found[n]}
                     for n, (u, i, h, ref) in enumerate(pairs.itertuples(index=False)) if n < 20],
    }
