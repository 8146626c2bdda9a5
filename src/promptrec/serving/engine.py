"""The served model: any saved model directory plus what answering needs besides the model.

Dynamic adjustment lives here. A user's answer is built from their *current* state: the history
saved with the model, then the feedback events acknowledged since, in time order. Positive events
(click, purchase, a rating at or above ``like_threshold``) extend the history the prompt shows and
the set of items excluded as seen; skips and low ratings demote the item (it goes below every
item without such feedback) but keep it available. Nothing is retrained for this: the next
request sees the new prompt.

Cold start: a user with no saved history, no feedback and no explicit history gets the training
popularity order (``strategy="popularity"``); the answer says so. Everyone else gets the model's
``recommend`` with their current history (``strategy="model"``).

Explanations (an engine built with ``explain=LLM``): a query that asks for them gets, for each of
its first ``explain_top`` items, the sentence :class:`~promptrec.models.llm.explain.Explainer`
writes from the same history the ranking used, with its grounding. Generation costs about as
much per item as ranking a whole batch, hence the cap and the opt-in.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .store import StoredEvent

# The model (and torch) is loaded where an Engine is built and used: the HTTP process, which
# only exchanges these dataclasses with the model process, never loads them.

POSITIVE = ("click", "purchase")
LIKE_THRESHOLD = 3.0  # a rating at or above it is positive feedback, below it demotes the item


def is_negative(event_type: str, value: float | None, like_threshold: float = LIKE_THRESHOLD) -> bool:
    """Skips and ratings below ``like_threshold``: feedback that demotes the item."""
    return event_type == "skip" or (event_type == "rating" and (value or 0.0) < like_threshold)


@dataclass(frozen=True)
class UserState:
    """What a request knows of a user: prompt history, excluded and demoted items."""

    history: list[str]  # known items, oldest first, as the prompt shows them
    demoted: frozenset[str] = frozenset()
    known: bool = True  # False: no saved history, feedback or explicit history (cold start)


@dataclass(frozen=True)
class Query:
    user_id: str
    state: UserState
    k: int
    exclude_seen: bool = True
    candidates: tuple[str, ...] | None = None
    explain: int = 0  # explain the first this many items (0: none)


@dataclass(frozen=True)
class Ranked:
    item_id: str
    score: float
    demoted: bool = False


@dataclass
class Answer:
    items: list[Ranked]
    strategy: str  # "model" or "popularity"
    model_version: str = ""
    extra: dict = field(default_factory=dict)
    # One per explained item, in rank order: Explainer.explain's rows (sentence and grounding).
    explanations: list[dict] | None = None


class Engine:
    """One loaded model directory, any registered recommender, used through the recommender
    protocol only; immutable after construction so it can be swapped atomically."""

    def __init__(
        self, model_dir: str | Path, quantize: str | None = None, like_threshold: float = LIKE_THRESHOLD,
        explain: str | None = None, runtime: str | None = None,
    ) -> None:
        """``runtime``: an inference engine for the model (``"onnx"``: ONNX Runtime for the LM
        recommenders, its exported graph cached by the directory's version); None: its own code."""
        from ..core.cache import directory_version, runtime_cache
        from ..core.recommender import load_recommender

        directory = Path(model_dir)
        started = time.perf_counter()
        self.rec = load_recommender(directory)
        self.rec.progress = False
        if quantize not in (None, "none"):
            self.rec.quantize(quantize)
        self.quantize = quantize if quantize != "none" else None
        self.model_dir = directory
        self.version = directory_version(directory)
        self.runtime = runtime or "default"
        if self.runtime != "default":
            if self.quantize:
                raise ValueError(f"runtime {runtime!r} exports the model's own weights: not with quantize")
            self.rec.use_runtime(self.runtime, cache_dir=runtime_cache(self.runtime, self.version))
        self.like_threshold = like_threshold
        self.item_order = self.rec.catalogue()
        self.catalogue = set(self.item_order)
        items = self.rec.item_table()
        self.items = items
        self.titles: dict[str, str] = items["title"].dropna().astype(str).to_dict() if "title" in items else {}
        known = self.rec.stage_histories("test")
        self.users = sorted(known)
        counts = Counter(i for h in known.values() for i in h)
        # Ties by catalogue position: a fixed order, not one that depends on item id strings.
        self.position = {item: n for n, item in enumerate(self.item_order)}
        self.popular = sorted(self.item_order, key=lambda i: (-counts[i], self.position[i]))
        self.popular_count = counts
        self.capabilities = self.rec.capabilities()
        self.explainer = None
        if explain:
            from ..models.llm.explain import Explainer

            self.explainer = Explainer(explain, items)
            self.capabilities = self.capabilities | {"explain"}
        self.load_seconds = round(time.perf_counter() - started, 3)

    # -- user state ----------------------------------------------------------------------------
    def user_state(
        self, user_id: str, events: Sequence[StoredEvent], explicit: Sequence[str] | None = None
    ) -> UserState:
        """The user's history (explicit if given, else saved + positive feedback) and demotions.

        Items unknown to the model cannot be part of its answer's history and are left out.
        """
        demoted: set[str] = set()
        added: list[str] = []
        for e in events:
            if e.item_id not in self.catalogue:
                continue
            if is_negative(e.type, e.value, self.like_threshold):
                demoted.add(e.item_id)
            else:  # click, purchase or a rating at the threshold or above
                added.append(e.item_id)
                demoted.discard(e.item_id)  # a later positive event outweighs an earlier skip
        if explicit is not None:
            history = [i for i in explicit if i in self.catalogue]
            return UserState(history, frozenset(demoted), known=bool(history) or bool(events))
        saved = self.rec.history(user_id, "test")
        history = saved + added
        return UserState(history, frozenset(demoted), known=bool(saved) or bool(events))

    # -- answering -----------------------------------------------------------------------------
    def popularity(self, query: Query) -> list[Ranked]:
        seen = set(query.state.history) if query.exclude_seen else set()
        pool = query.candidates if query.candidates is not None else self.popular
        if query.candidates is not None:
            pool = sorted(pool, key=lambda i: (-self.popular_count[i], self.position[i]))
        ranked = [i for i in pool if i not in seen]
        ranked.sort(key=lambda i: i in query.state.demoted)  # stable: demoted last
        return [
            Ranked(i, float(self.popular_count[i]), i in query.state.demoted) for i in ranked[: query.k]
        ]

    def answer(self, queries: Sequence[Query]) -> list[Answer]:
        """Answers for many queries at once: queries that ask the model for the same list length
        share one ``recommend`` call (the micro-batch), as long as their user ids differ."""
        answers: list[Answer | None] = [None] * len(queries)
        groups: dict[tuple[int, bool], list[list[int]]] = {}
        for n, q in enumerate(queries):
            if not q.state.known:
                answers[n] = Answer(self.popularity(q), "popularity", self.version)
                continue
            available, demoted = self._available(q)
            if not available:
                answers[n] = Answer([], "model", self.version)
                continue
            # Enough items to fill k after demoted items move down.
            depth = min(q.k + demoted, available)
            calls = groups.setdefault((depth, q.exclude_seen), [])
            # One call answers each user once: a repeated user id starts another call.
            call = next((c for c in calls if all(queries[m].user_id != q.user_id for m in c)), None)
            if call is None:
                calls.append(call := [])
            call.append(n)
        for (depth, exclude_seen), calls in groups.items():
            for members in calls:
                batch = [queries[n] for n in members]
                lists = self.rec.ranked(
                    [q.user_id for q in batch],
                    k=depth,
                    exclude_seen=exclude_seen,
                    histories={q.user_id: q.state.history for q in batch},
                    candidates={q.user_id: list(q.candidates) for q in batch if q.candidates is not None} or None,
                )
                for n, q, items in zip(members, batch, lists):
                    ranked = [Ranked(i, float(s), i in q.state.demoted) for i, s in items]
                    ranked.sort(key=lambda r: r.demoted)  # stable: best first within each part
                    answers[n] = Answer(ranked[: q.k], "model", self.version)
        for q, a in zip(queries, answers):
            if q.explain and a is not None:
                a.explanations = self.explain(q.state.history, [r.item_id for r in a.items[: q.explain]])
        return answers  # type: ignore[return-value]

    def explain(self, history: Sequence[str], items: Sequence[str]) -> list[dict]:
        """Explainer rows for ``items`` recommended after ``history``: one generation batch per
        answer, as ``promptrec recommend --explain`` makes for one user's list (greedy decoding:
        the same sentences)."""
        if self.explainer is None:
            raise ValueError("this model was loaded without an explainer")
        return self.explainer.explain([(history, i) for i in items]) if items else []

    def _available(self, q: Query) -> tuple[int, int]:
        """How many items the model may return for ``q``, and how many of those are demoted.

        Counted without building a catalogue-sized set: this runs for every request.
        """
        seen = set(q.state.history) if q.exclude_seen else set()
        if q.candidates is not None:
            pool = set(q.candidates) - seen
            return len(pool), len(q.state.demoted & pool)
        available = len(self.catalogue) - len(seen & self.catalogue)
        return available, len(q.state.demoted - seen)

    def score(self, pairs: Sequence[tuple[str, str, list[str]]]) -> list[float]:
        """P(like) for (user, item, history) triples (models with the ``score`` capability)."""
        users, items, histories = zip(*pairs) if pairs else ((), (), ())
        return self.rec.score(list(users), list(items), histories=list(histories)).tolist()

    def rate(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        users, items = zip(*pairs) if pairs else ((), ())
        return self.rec.predict_rating(list(users), list(items)).tolist()

    def title(self, item_id: str) -> str | None:
        return self.titles.get(item_id)
