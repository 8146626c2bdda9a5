"""Grounding a chat model's answer in the catalogue.

A reply is cut into the things it names (one per line, list markers stripped; a one-line answer
is cut at ``;``, ``|`` and, for labels and codes, at commas too; a line made only of candidate
labels, ``C H A``, is cut at the spaces). Each is mapped, in this order, to:

1. a **candidate label** (``B``, ``[B]``, ``B.``) when the prompt listed labelled candidates;
2. **item codes** (``<a_12><b_3>``), when the model speaks promptrec's item codes;
3. an explicit **item id** (``id 123``, ``(id: 123)``);
4. a **title**, by fuzzy matching (rapidfuzz ``WRatio``) with a threshold, so that "Star Wars"
   finds "Star Wars (1977)" and a made-up title finds nothing.

What maps to nothing is an *invalid* answer (not in the catalogue); a reply in which nothing could
be grounded at all is a *parse failure*.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

_MARKER = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,3}[.):]|\(?[A-Za-z][.)])\s+")
_LABEL = re.compile(r"^\s*[\[(]?([A-Z]{1,2}|\d{1,3})[\])]?[.:)]?(?:\s|$)")
_ID = re.compile(r"\bid\s*[:=#]?\s*([\w.-]+)", re.IGNORECASE)
_CODE = re.compile(r"<[^<>\s]+>")


@dataclass
class Grounded:
    items: list[str] = field(default_factory=list)  # catalogue ids, in the reply's order, unique
    named: int = 0  # things the reply named
    invalid: int = 0  # of those, how many map to no catalogue item
    duplicates: int = 0  # named again after an earlier mention of the same item

    @property
    def parse_failure(self) -> bool:
        return not self.items


class Grounder:
    """Maps reply text to catalogue item ids.

    Args:
        titles: item id -> title (the catalogue).
        codes: item code text (``"<a_12><b_3>"``) -> item id, for models that answer in codes.
        threshold: the least rapidfuzz ``WRatio`` (0-100) for a title match.
    """

    def __init__(self, titles: Mapping[str, str], codes: Mapping[str, str] | None = None, threshold: float = 85.0) -> None:
        self.ids = set(titles)
        self.threshold = threshold
        # One item per distinct title: equal titles (re-releases) go to the first id listed.
        self._by_title: dict[str, str] = {}
        for item, title in titles.items():
            if title:
                self._by_title.setdefault(_norm(title), item)
        self._titles = list(self._by_title)
        self.codes = {re.sub(r"\s+", "", c): i for c, i in (codes or {}).items()}
        self._code_prefixes = {c[:j] for c in self.codes for j in range(1, len(c) + 1)}

    def ground(self, text: str | None, labels: Mapping[str, str] | None = None) -> Grounded:
        """``labels``: label -> item id of the candidates the prompt showed (rerank)."""
        out = Grounded()
        if not text:
            return out
        seen: set[str] = set()
        for part in self._parts(text, labels):
            out.named += 1
            item = self._one(part, labels)
            if item is None:
                out.invalid += 1
            elif item in seen:
                out.duplicates += 1
            else:
                seen.add(item)
                out.items.append(item)
        return out

    def _parts(self, text: str, labels: Mapping[str, str] | None) -> list[str]:
        if self.codes and _CODE.search(text):
            return self._code_runs(text)
        lines = [ln for ln in (l.strip() for l in text.splitlines()) if ln]
        if len(lines) == 1:
            sep = r"[;|,]" if labels else r"[;|]"
            lines = [p.strip() for p in re.split(sep, lines[0]) if p.strip()]
        if labels:
            # Labels on one line ("C H A"), one token each, the cheapest answer to generate; a
            # line with any word that is not a label ("A Clockwork Orange") stays whole.
            lines = [p for ln in lines for p in _label_run(ln, labels)]
        return [ln if self._label(ln, labels) else _MARKER.sub("", ln, count=1).strip() for ln in lines]

    @staticmethod
    def _label(part: str, labels: Mapping[str, str] | None) -> str | None:
        """The candidate label ``part`` starts with ("B", "[B]", "B. Title"), if any."""
        m = _LABEL.match(part) if labels else None
        return m.group(1) if m and m.group(1) in labels else None

    def _code_runs(self, text: str) -> list[str]:
        """Consecutive code tokens, cut greedily into the longest known item codes; a run that
        is no item's code is one invalid answer."""
        runs: list[str] = []
        tokens = _CODE.findall(text)
        current = ""
        for tok in tokens:
            # A new run starts where the current one cannot go on, unless both are garbage
            # (then the garbage goes on: one unknown code, not one per token).
            if current and current + tok not in self._code_prefixes and (
                current in self._code_prefixes or tok in self._code_prefixes
            ):
                runs.append(current)
                current = ""
            current += tok
            if current in self.codes and not any(p.startswith(current) and p != current for p in self._extensions(current)):
                runs.append(current)
                current = ""
        if current:
            runs.append(current)
        return runs

    def _extensions(self, code: str) -> list[str]:
        # Only consulted when codes have different lengths (rare): a code that is a prefix of a
        # longer one waits for the next token.
        return [c for c in self.codes if len(c) > len(code) and c.startswith(code)]

    def _one(self, part: str, labels: Mapping[str, str] | None) -> str | None:
        if (label := self._label(part, labels)) is not None:
            return labels[label]
        if self.codes:
            code = re.sub(r"\s+", "", part)
            if code in self.codes:
                return self.codes[code]
        m = _ID.search(part)
        if m and m.group(1) in self.ids:
            return m.group(1)
        if part in self.ids:
            return part
        return self._title(part)

    def _title(self, part: str) -> str | None:
        from rapidfuzz import fuzz, process

        query = _norm(_ID.sub("", part))
        if not query or not self._titles:
            return None
        exact = self._by_title.get(query)
        if exact is not None:
            return exact
        found = process.extractOne(query, self._titles, scorer=fuzz.WRatio, score_cutoff=self.threshold)
        return self._by_title[found[0]] if found else None


def _label_run(line: str, labels: Mapping[str, str]) -> list[str]:
    words = [w.strip("[]().:") for w in re.split(r"[\s,;|]+", line) if w.strip("[]().:")]
    return words if len(words) > 1 and all(w in labels for w in words) else [line]


def _norm(text: str) -> str:
    text = text.strip().strip("\"'`*").strip()
    # A trailing "(id 123)" is the id, not part of the title.
    text = re.sub(r"[\s(\[]*\bid\s*[:=#]?\s*[\w.-]+[)\]]?\s*$", "", text, flags=re.IGNORECASE)
    return re.sub(r"\s+", " ", text).lower()
