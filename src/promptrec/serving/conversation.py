"""Conversational recommendation: a session that grounds what the user says in the catalogue.

Each user message is *grounded*: item ids are found exactly, titles and attribute values
(``categories`` — MovieLens genres, Amazon categories — and ``brand``) by fuzzy matching with
rapidfuzz above a threshold, and a user id after the word "user". Every mention gets a polarity
from the nearest cue before it in the same sentence: "I liked A", "more like A" (like); "not B",
"I didn't like B", "no more B", "anything but B" (dislike); no cue means like.

The session state then changes:

- a liked item joins the history the model is prompted with (after the user's stored history),
  so it is also excluded from the answer as seen; a disliked item is excluded;
- a liked attribute value is a constraint (items must have one of the values named for that
  column in the latest turn that named any); a disliked value excludes every item that has it.

Recommending is left to a backend, so one :class:`Conversation` serves both the terminal
(``promptrec chat``, with a model loaded in-process) and the HTTP server's chat endpoint (which
rebuilds the session from the whole message list on every request, the protocol being
stateless, and asks its model processes). The backend receives a :class:`Plan`: user, liked items,
how many items to fetch and, under attribute constraints, the candidate set. Item dislikes are
met by over-fetching and filtering; attribute filters by restricting the candidates, because
over-fetching for a rare genre would mean a beam as wide as the catalogue.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

MATCH_THRESHOLD = 85.0  # rapidfuzz score (0-100) a title or attribute value must reach
ATTRIBUTE_COLUMNS = ("categories", "brand")
# Words that name a column; "genre" is how MovieLens users speak of its categories.
COLUMN_WORDS = {
    "categories": ("genre", "genres", "category", "categories", "type", "kind"),
    "brand": ("brand", "brands", "maker", "made by"),
}
COLUMN_LABELS = {"categories": "category", "brand": "brand"}

Polarity = Literal["like", "dislike"]

# Longest alternatives first: the regex takes the first alternative that matches at a position.
_NEGATIVE = re.compile(
    r"\b(?:(?:i\s+)?(?:did|do|does|would|could)\s*(?:n['’]?t|\s+not)\s+(?:really\s+)?"
    r"(?:like|love|enjoy|want|care\s+for|need|watch)|"
    r"not\s+(?:a\s+fan\s+of|into|interested\s+in)|no\s+more|nothing\s+(?:like|with)|anything\s+but|"
    r"other\s+than|except(?:\s+for)?|without|exclud(?:e|ing)|avoid|hate[ds]?|dislike[ds]?|"
    r"can['’]?t\s+stand|tired\s+of|not|no|never|skip)\b"
)
_POSITIVE = re.compile(
    r"\b(?:liked|likes?|loved?|loves|enjoy(?:ed|s)?|adored?|fan\s+of|more\s+like|similar\s+to|"
    r"want|prefer(?:red)?|into|watched|bought)\b"
)
# Sentence ends and contrast words: a cue does not reach past them.
_BOUNDARY = re.compile(r"[;!?\n]|\.(?=\s|$)|\b(?:but|however|although|though)\b")
# No title window spans these; commas and colons may be part of a title ("Net, The", "Mission:
# Impossible"), and the best-scoring window wins anyway.
_SPLIT = re.compile(r"[()\[\]\"“”/]")
EXACT_WITH_CUE = 95.0  # a title window that contains a cue word ("Like Water for Chocolate") must score this
_ABBREVIATION = re.compile(r"\b(?:mr|mrs|ms|dr|st|jr|sr|vs|vol)\.$")
_RESET = re.compile(r"\b(?:start\s+over|reset|forget\s+(?:everything|it\s+all))\b")
_WORD = re.compile(r"[\w][\w'’\-&]*")
_USER = re.compile(r"\buser(?:[\s_-]*id)?(?:\s*[:=#]\s*|\s+(?:is\s+)?)([\w\-.]*\w)", re.IGNORECASE)
_GLUED_USER = re.compile(r"\buser[\w\-.]*?\d(?:[\w\-.]*\w)?", re.IGNORECASE)
_PREFIXED_ID = re.compile(r"(?:\b(?:item|id|movie|product)\s*[:#]?\s*|#)([\w\-.]*\w)", re.IGNORECASE)
_STOP = frozenset({
    "i", "me", "my", "we", "a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "for", "with", "some",
    "something", "anything", "more", "most", "movie", "movies", "film", "films", "item", "items", "product",
    "products", "please", "recommend", "recommendation", "recommendations", "show", "give", "it", "that",
    "this", "these", "those", "was", "is", "are", "be", "been", "also", "too", "very", "really", "lot",
    "much", "again", "so", "what", "about", "any", "one", "ones", "stuff", "thing", "things", "user", "genre",
    "genres", "category", "categories", "brand", "brands", "kind", "type", "good", "great", "new", "other",
    "well", "maybe", "just", "now", "next", "then", "than", "there", "here", "you", "your", "them", "they",
    "he", "she", "his", "her", "its", "our", "have", "has", "had", "am", "will", "would", "could", "should",
    "can", "do", "did", "does", "dont", "didnt", "doesnt", "by", "from", "made", "maker",
})
_ARTICLE = re.compile(r"^(.*), (the|a|an|la|le|les|il|el|das|der|die|l')$", re.IGNORECASE)
_PARENS = re.compile(r"\s*\([^()]*\)\s*$")


def normalize(text: str) -> str:
    """Lower case, punctuation as spaces, one space between words."""
    text = text.lower().replace("’", "'").replace("'", "")
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def title_aliases(title: str) -> list[str]:
    """Normalised forms a user may type for a title: without the trailing "(1995)" and with a
    trailing article put in front ("Godfather, The" -> "the godfather"); long titles also by
    their head before a colon, dash or comma."""
    text = title.strip()
    while _PARENS.search(text) and _PARENS.sub("", text):
        text = _PARENS.sub("", text)
    forms = [normalize(text)]  # as the catalogue writes it: "net the"
    moved = _ARTICLE.match(text)
    if moved:
        text = f"{moved.group(2)} {moved.group(1)}"
        forms.insert(0, normalize(text))
    bare = re.sub(r"^(?:the|a|an) ", "", forms[0])
    if len(bare.split()) >= 1 and bare != forms[0] and len(bare) >= 4:
        forms.append(bare)  # "Godfather" for "The Godfather"
    head = re.split(r":|\s-\s|,", text, maxsplit=1)[0]
    if head != text and len(normalize(head).split()) >= 2:
        forms.append(normalize(head))
    return [f for f in dict.fromkeys(forms) if f]


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def item_attributes(items: Any) -> dict[str, dict[str, list[str]]]:
    """``{column: {item_id: [values]}}`` from an item table (a pandas DataFrame indexed by item
    id) for the attribute columns it has; lists (categories) and single strings (brand) alike."""
    out: dict[str, dict[str, list[str]]] = {}
    for column in ATTRIBUTE_COLUMNS:
        if items is None or column not in items:
            continue
        values: dict[str, list[str]] = {}
        for item, value in items[column].items():
            if isinstance(value, str):
                found = [value]
            elif value is None or (isinstance(value, float) and math.isnan(value)):
                found = []
            else:
                found = [str(v) for v in value]
            found = [v.strip() for v in found if v and v.strip()]
            if found:
                values[str(item)] = found
        if values:
            out[column] = values
    return out


@dataclass(frozen=True)
class Mention:
    """One thing the user named, grounded in the catalogue."""

    kind: Literal["item", "attribute", "user"]
    value: str  # item id, attribute value (as the catalogue spells it) or user id
    text: str  # the words of the message that matched
    polarity: Polarity
    score: float  # match score, 0-100; 100 for exact ids
    column: str | None = None  # attribute column
    title: str | None = None  # item title

    def describe(self) -> str:
        if self.kind == "item":
            return f"{self.title} (item {self.value})" if self.title else f"item {self.value}"
        if self.kind == "attribute":
            return f"{COLUMN_LABELS.get(self.column or '', self.column)} {self.value}"
        return f"user {self.value}"


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    kind: str  # "mention", "like", "dislike", "boundary"
    mention: Mention | None = None


class Catalogue:
    """What grounding needs of a model: item ids, titles, attribute values, known user ids."""

    def __init__(
        self,
        items: Sequence[str],
        titles: Mapping[str, str] | None = None,
        attributes: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        users: Iterable[str] = (),
        threshold: float = MATCH_THRESHOLD,
    ) -> None:
        try:
            from rapidfuzz import fuzz, process
        except ImportError as err:  # an optional dependency
            raise ImportError("conversational recommendation needs rapidfuzz: pip install 'promptrec[llm]'") from err
        self._fuzz, self._process = fuzz, process
        self.items = list(items)
        self.ids = set(self.items)
        self.titles = {i: t for i, t in (titles or {}).items() if i in self.ids and isinstance(t, str)}
        self.attributes = {c: {i: list(v) for i, v in vals.items() if i in self.ids} for c, vals in (attributes or {}).items()}
        self.users = set(users)
        self.threshold = threshold
        self._numeric_ids = any(i.isdigit() for i in self.items)
        alias_items: dict[str, list[str]] = {}
        for item in self.items:
            for alias in title_aliases(self.titles.get(item, "")):
                alias_items.setdefault(alias, []).append(item)
        self._title_aliases = list(alias_items)
        self._title_items = alias_items
        self._max_title_words = max((len(a.split()) for a in alias_items), default=1)
        self._values: list[tuple[str, str]] = []  # (column, value) in a fixed order
        self._value_keys: list[str] = []
        for column, per_item in self.attributes.items():
            for value in dict.fromkeys(v for vals in per_item.values() for v in vals):
                self._values.append((column, value))
                self._value_keys.append(normalize(value))

    @classmethod
    def from_recommender(cls, rec: Any, threshold: float = MATCH_THRESHOLD) -> Catalogue:
        """From a loaded recommender (its catalogue, item table and known users)."""
        items = rec.item_table()
        titles = items["title"].dropna().astype(str).to_dict() if "title" in items else {}
        return cls(rec.catalogue(), titles, item_attributes(items), rec.users(), threshold)

    def title(self, item: str) -> str | None:
        return self.titles.get(item)

    # -- filters -------------------------------------------------------------------------------
    def satisfies(self, item: str, required: Mapping[str, Sequence[str]], banned: Mapping[str, Sequence[str]]) -> bool:
        """Has one of the required values of every constrained column and none of the banned."""
        for column, values in required.items():
            if values and not set(values) & set(self.attributes.get(column, {}).get(item, ())):
                return False
        for column, values in banned.items():
            if set(values) & set(self.attributes.get(column, {}).get(item, ())):
                return False
        return True

    def matching(self, required: Mapping[str, Sequence[str]], banned: Mapping[str, Sequence[str]]) -> list[str]:
        """Catalogue items (in catalogue order) that pass the attribute filters."""
        return [i for i in self.items if self.satisfies(i, required, banned)]

    # -- grounding -----------------------------------------------------------------------------
    def ground(self, message: str) -> list[Mention]:
        """The mentions of ``message`` in order of appearance, each with its polarity."""
        text = message.replace("’", "'")
        lower = text.lower()
        negative = [(m.start(), m.end()) for m in _NEGATIVE.finditer(lower)]
        spans: list[_Span] = [
            _Span(m.start(), m.end(), "boundary") for m in _BOUNDARY.finditer(lower)
            # "anything but" is a cue, not a contrast; "Mr." does not end a sentence.
            if not _overlaps(negative, m.start(), m.end()) and not _ABBREVIATION.search(lower, 0, m.end())
        ]
        spans += [_Span(s, e, "dislike") for s, e in negative]
        cues = list(negative)
        for m in _POSITIVE.finditer(lower):
            if not _overlaps(cues, m.start(), m.end()):
                spans.append(_Span(m.start(), m.end(), "like"))
                cues.append((m.start(), m.end()))
        taken: list[tuple[int, int]] = []  # what no other mention may overlap
        for start, end, mention in self._users(text) + self._item_ids(text, cues):
            spans.append(_Span(start, end, "mention", mention))
            taken.append((start, end))
        titles = []
        for start, end, mention in self._fuzzy(text, taken, cues):
            spans.append(_Span(start, end, "mention", mention))
            titles.append((start, end))
        # A cue or boundary word inside a title ("Like Water for Chocolate") is part of the title.
        spans = [sp for sp in spans if sp.kind == "mention" or not any(s <= sp.start and sp.end <= e for s, e in titles)]
        # Walk in order: a cue sets the polarity of what follows until the next boundary.
        out: list[Mention] = []
        polarity: Polarity = "like"
        for span in sorted(spans, key=lambda s: (s.start, s.kind != "boundary")):
            if span.kind == "boundary":
                polarity = "like"
            elif span.kind in ("like", "dislike"):
                polarity = span.kind  # type: ignore[assignment]
            elif span.mention is not None:
                m = span.mention
                out.append(m if m.kind == "user" else Mention(**{**asdict(m), "polarity": polarity}))
        return out

    def _users(self, text: str) -> list[tuple[int, int, Mention]]:
        found = []
        for m in _USER.finditer(text):
            value = m.group(1)
            if value in self.users or any(c.isdigit() for c in value):
                found.append((m.start(), m.end(), Mention("user", value, m.group(0), "like", 100.0)))
        for m in _GLUED_USER.finditer(text):  # "user0": the whole token is the id
            if (not self.users or m.group(0) in self.users) and not _overlaps([(s, e) for s, e, _ in found], *m.span()):
                found.append((m.start(), m.end(), Mention("user", m.group(0), m.group(0), "like", 100.0)))
        if self.users:  # "user 12" where the id is "user12", or "user12" where it is "12"
            fixed = []
            for s, e, mention in found:
                if mention.value not in self.users:
                    for alt in (re.sub(r"\s+", "", mention.text), mention.value.removeprefix("user")):
                        if alt in self.users:
                            mention = Mention("user", alt, mention.text, "like", 100.0)
                            break
                fixed.append((s, e, mention))
            found = fixed
        return found

    def _item_ids(self, text: str, taken: list[tuple[int, int]]) -> list[tuple[int, int, Mention]]:
        """Ids written out: any whole word that is an id; numeric ids only after "item", "id"
        or "#", since a bare number in a sentence is more often a count or a year."""
        found: list[tuple[int, int, Mention]] = []
        for m in _PREFIXED_ID.finditer(text):
            if m.group(1) in self.ids and not _overlaps(taken, *m.span()):
                found.append((m.start(), m.end(), self._item_mention(m.group(1), m.group(0), 100.0)))
        for m in _WORD.finditer(text):
            word = m.group(0)
            if word in self.ids and not word.isdigit() and not _overlaps(taken + [f[:2] for f in found], *m.span()):
                found.append((m.start(), m.end(), self._item_mention(word, word, 100.0)))
        return found

    def _item_mention(self, item: str, text: str, score: float) -> Mention:
        return Mention("item", item, text, "like", score, title=self.titles.get(item))

    def _fuzzy(
        self, text: str, taken: list[tuple[int, int]], cues: list[tuple[int, int]]
    ) -> list[tuple[int, int, Mention]]:
        """Titles and attribute values over word windows; the best non-overlapping matches win
        (higher score, then more words, then attributes before titles). A window may contain
        cue words only as part of a near-exact title."""
        fuzz, process = self._fuzz, self._process
        words = [(m.start(), m.end()) for m in _WORD.finditer(text) if not _overlaps(taken, m.start(), m.end())]
        # Runs of consecutive free words: a window never crosses a cue, a mention or punctuation.
        runs: list[list[tuple[int, int]]] = []
        for start, end in words:
            if runs and self._adjacent(text, runs[-1][-1][1], start, taken):
                runs[-1].append((start, end))
            else:
                runs.append([(start, end)])
        candidates = []  # (score, words, kind priority, start, end, mention)
        for run in runs:
            for i in range(len(run)):
                for j in range(i + 1, min(len(run), i + self._max_title_words + 1) + 1):
                    start, end = run[i][0], run[j - 1][1]
                    key = normalize(text[start:end])
                    if not key or all(w in _STOP for w in key.split()):
                        continue
                    n_words = j - i
                    has_cue = _overlaps(cues, start, end)
                    if self._title_aliases and len(key) >= 3:
                        # One word must match exactly: "big" in "a big fan" is not the film Big
                        # by a typo's distance.
                        cutoff = 100.0 if n_words == 1 else EXACT_WITH_CUE if has_cue else self.threshold
                        hit = process.extractOne(key, self._title_aliases, scorer=fuzz.ratio, score_cutoff=cutoff)
                        if hit is not None:
                            item = self._title_items[hit[0]][0]
                            mention = self._item_mention(item, text[start:end], round(hit[1], 1))
                            candidates.append((hit[1], n_words, 1, start, end, mention))
                    if self._value_keys and n_words <= 3 and not has_cue:
                        forms = dict.fromkeys((key, " ".join(_singular(w) for w in key.split())))
                        hits = [process.extractOne(f, self._value_keys, scorer=fuzz.ratio, score_cutoff=self.threshold)
                                for f in forms]
                        hit = max((h for h in hits if h is not None), key=lambda h: h[1], default=None)
                        if hit is not None:
                            column, value = self._values[hit[2]]
                            mention = Mention("attribute", value, text[start:end], "like", round(hit[1], 1), column)
                            candidates.append((hit[1], n_words, 0, start, end, mention))
        chosen: list[tuple[int, int, Mention]] = []
        for _, _, _, start, end, mention in sorted(candidates, key=lambda c: (-c[0], -c[1], c[2], c[3])):
            if not _overlaps([(s, e) for s, e, _ in chosen], start, end):
                chosen.append((start, end, mention))
        return chosen

    @staticmethod
    def _adjacent(text: str, end: int, start: int, taken: list[tuple[int, int]]) -> bool:
        between = text[end:start]
        if _SPLIT.search(between) or _overlaps(taken, end, start):
            return False
        stop = _BOUNDARY.search(between.lower())
        return stop is None or bool(stop.group() == "." and _ABBREVIATION.search(text[: end + 1].lower()))


def _overlaps(spans: Iterable[tuple[int, int]], start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in spans)


@dataclass
class SessionState:
    """What the conversation has established so far."""

    user_id: str | None = None
    liked: list[str] = field(default_factory=list)  # oldest first, as the history is shown
    disliked: list[str] = field(default_factory=list)
    required: dict[str, list[str]] = field(default_factory=dict)  # column -> any of these values
    banned: dict[str, list[str]] = field(default_factory=dict)  # column -> none of these values

    def apply(self, mentions: Sequence[Mention]) -> None:
        named_now: set[str] = set()
        for m in mentions:
            if m.kind == "user":
                self.user_id = m.value
            elif m.kind == "item":
                _remove(self.liked, m.value)
                _remove(self.disliked, m.value)
                (self.liked if m.polarity == "like" else self.disliked).append(m.value)
            elif m.kind == "attribute" and m.column is not None:
                column = m.column
                if m.polarity == "like":
                    # A turn that names values for a column replaces the earlier constraint on it
                    # ("something in genre Comedy" after "in genre Drama"); values named together
                    # are alternatives.
                    if column not in named_now:
                        self.required[column] = []
                        named_now.add(column)
                    _add(self.required[column], m.value)
                    _remove(self.banned.get(column, []), m.value)
                else:
                    _add(self.banned.setdefault(column, []), m.value)
                    _remove(self.required.get(column, []), m.value)
        self.required = {c: v for c, v in self.required.items() if v}
        self.banned = {c: v for c, v in self.banned.items() if v}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _remove(values: list[str], value: str) -> None:
    if value in values:
        values.remove(value)


def _add(values: list[str], value: str) -> None:
    if value not in values:
        values.append(value)


@dataclass(frozen=True)
class Plan:
    """What the backend is asked: ``fetch`` items for ``user_id`` (None: nobody in particular)
    with ``liked`` appended to their history, among ``candidates`` if given, seen items excluded."""

    user_id: str | None
    liked: tuple[str, ...]
    fetch: int
    candidates: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RecommendedItem:
    item_id: str
    title: str | None
    score: float
    rank: int


@dataclass(frozen=True)
class Reply:
    text: str
    items: list[RecommendedItem]
    mentions: list[Mention]  # of the latest message
    state: dict[str, Any]
    strategy: str  # "model", "popularity" or "none" (the filters left nothing)
    note: str | None = None  # e.g. fewer than k items left after the filters

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "items": [asdict(i) for i in self.items],
            "mentions": [asdict(m) for m in self.mentions],
            "state": self.state,
            "strategy": self.strategy,
            "note": self.note,
        }


# A backend ranks for a plan: (item id, score) best first, and the strategy it used.
Backend = Callable[[Plan], tuple[list[tuple[str, float]], str]]


class Conversation:
    """A multi-turn recommendation session over one catalogue.

    ``turn(message)`` grounds the message, updates the state and answers with ``k`` items; the
    HTTP endpoint uses the steps (``update``, ``plan``, ``reply``) to ask its model asynchronously.
    """

    def __init__(
        self, catalogue: Catalogue, backend: Backend | None = None, user_id: str | None = None, k: int = 10
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.catalogue = catalogue
        self.backend = backend
        self.k = k
        self.state = SessionState(user_id=user_id)
        self.turns: list[list[Mention]] = []

    def update(self, message: str) -> list[Mention]:
        """Ground ``message`` and apply it to the state; returns its mentions."""
        if _RESET.search(message.lower()):
            self.state = SessionState(user_id=self.state.user_id)
        mentions = self.catalogue.ground(message)
        self.state.apply(mentions)
        self.turns.append(mentions)
        return mentions

    def plan(self, k: int | None = None) -> Plan | None:
        """The backend request for the current state; None when the filters leave no item."""
        k = k or self.k
        s = self.state
        excluded = set(s.disliked) | set(s.liked)
        candidates = None
        if s.required or s.banned:
            candidates = tuple(i for i in self.catalogue.matching(s.required, s.banned) if i not in excluded)
            if not candidates:
                return None
            fetch = min(k, len(candidates))
        else:
            # Disliked items may be among the best: ask for as many more as could be dropped.
            fetch = min(k + len(s.disliked), len(self.catalogue.items))
        return Plan(s.user_id, tuple(s.liked), fetch, candidates)

    def reply(self, plan: Plan | None, ranked: Sequence[tuple[str, float]], strategy: str, k: int | None = None) -> Reply:
        """The answer for the latest message from what the backend ranked for ``plan``."""
        k = k or self.k
        s = self.state
        dropped = set(s.disliked) | set(s.liked)
        kept = [
            (i, score) for i, score in ranked
            if i not in dropped and self.catalogue.satisfies(i, s.required, s.banned)
        ][:k]
        items = [RecommendedItem(i, self.catalogue.title(i), float(score), n) for n, (i, score) in enumerate(kept, 1)]
        note = None
        if len(items) < k:
            what = self._filters_text() or "your history"
            note = (
                f"Only {len(items)} item{'s' if len(items) != 1 else ''} left that match{'es' if len(items) == 1 else ''} "
                f"{what} and that you have not seen, liked or ruled out; you asked for {k}."
            )
        mentions = self.turns[-1] if self.turns else []
        return Reply(self._text(mentions, items, note), items, mentions, s.to_dict(),
                     strategy if plan is not None else "none", note)

    def turn(self, message: str, k: int | None = None) -> Reply:
        if self.backend is None:
            raise ValueError("this conversation has no backend to recommend with")
        self.update(message)
        plan = self.plan(k)
        ranked, strategy = self.backend(plan) if plan is not None else ([], "none")
        return self.reply(plan, ranked, strategy, k)

    # -- text ----------------------------------------------------------------------------------
    def _filters_text(self) -> str:
        s = self.state
        parts = [f"{COLUMN_LABELS.get(c, c)} {' or '.join(v)}" for c, v in s.required.items()]
        parts += [f"no {COLUMN_LABELS.get(c, c)} {' or '.join(v)}" for c, v in s.banned.items()]
        return ", ".join(parts)

    def _text(self, mentions: Sequence[Mention], items: Sequence[RecommendedItem], note: str | None) -> str:
        s = self.state
        lines = []
        heard = [("" if m.polarity == "like" or m.kind == "user" else "not ") + m.describe() for m in mentions]
        if heard:
            lines.append("Noted: " + "; ".join(heard) + ".")
        else:
            lines.append("I did not recognise a user, item, or attribute in that message.")
        basis = []
        if s.user_id is not None:
            basis.append(f"user {s.user_id}'s history")
        if s.liked:
            basis.append("liking " + ", ".join(self._name(i) for i in s.liked))
        if s.disliked:
            basis.append("not " + ", ".join(self._name(i) for i in s.disliked))
        if self._filters_text():
            basis.append(self._filters_text())
        if items:
            lines.append(f"Recommended{' from ' + '; '.join(basis) if basis else ' (popular items)'}:")
            lines += [f"{r.rank}. {r.title or r.item_id} (item {r.item_id})" for r in items]
        if note:
            lines.append(note)
        return "\n".join(lines)

    def _name(self, item: str) -> str:
        return self.catalogue.title(item) or f"item {item}"


def engine_backend(engine: Any) -> Backend:
    """A backend over a loaded :class:`~promptrec.serving.engine.Engine`: the answering path of
    the server's /recommend, in this process. Liked items count as clicks after the user's
    stored history."""
    from .engine import Query
    from .store import StoredEvent

    def run(plan: Plan) -> tuple[list[tuple[str, float]], str]:
        user = plan.user_id if plan.user_id is not None else ""
        events = [StoredEvent(f"chat-{n}", user, item, "click", None, 0.0, 0.0, 0) for n, item in enumerate(plan.liked)]
        state = engine.user_state(user, events)
        answer = engine.answer([Query(user, state, plan.fetch, True, plan.candidates)])[0]
        return [(r.item_id, r.score) for r in answer.items], answer.strategy

    return run


__all__ = [
    "Catalogue",
    "Conversation",
    "Mention",
    "Plan",
    "RecommendedItem",
    "Reply",
    "SessionState",
    "engine_backend",
    "item_attributes",
    "normalize",
]
