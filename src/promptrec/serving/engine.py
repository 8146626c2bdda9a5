"""The served model: a saved P5 model directory plus what answering needs besides the LM.

Dynamic adjustment lives here. A user's answer is built from their *current* state: the history
saved with the model, then the feedback events acknowledged since, in time order. Positive events
(click, purchase, a rating at or above ``like_threshold``) extend the history the prompt shows and
the set of items excluded as seen; skips and low ratings demote the item (it goes below every
item without such feedback) but keep it available. Nothing is retrained for this: the next
request sees the new prompt.

Cold start: a user with no saved history, no feedback and no explicit history gets the training
popularity order (``strategy="popularity"``); the answer says so. Everyone else gets the LM's
constrained beam search (``strategy="model"``).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .store import StoredEvent

if TYPE_CHECKING:
    import torch

# torch and the model are imported where an Engine is built and used: the HTTP process, which
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


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of the Linear layers (weights int8, activations quantised per
    batch on the fly): CPU only, no calibration data needed."""
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao announces its move to torchao; the eager API still works and needs no extra package.
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _directory_version(directory: Path) -> str:
    """A short content-derived version: the weights file's size and mtime, and the directory."""
    weights = directory / "model.safetensors"
    stat = weights.stat()
    key = f"{directory.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class Engine:
    """One loaded model directory; immutable after construction so it can be swapped atomically."""

    def __init__(
        self, model_dir: str | Path, quantize: str | None = None, like_threshold: float = LIKE_THRESHOLD
    ) -> None:
        from ..model import P5Recommender

        directory = Path(model_dir)
        started = time.perf_counter()
        self.rec = P5Recommender.from_pretrained(directory, device="cpu")
        if quantize == "int8":
            self.rec.model = quantize_int8(self.rec.model)
        elif quantize not in (None, "none"):
            raise ValueError(f"quantize must be 'int8' or None, got {quantize!r}")
        self.quantize = quantize if quantize != "none" else None
        self.model_dir = directory
        self.version = _directory_version(directory)
        self.like_threshold = like_threshold
        self.catalogue = set(self.rec.catalogue)
        counts = Counter(i for h in self.rec.train_history.values() for i in h)
        counts.update(self.rec.valid_item.values())
        # Ties by catalogue position: a fixed order, not one that depends on item id strings.
        position = self.rec.item_pos
        self.popular = sorted(self.rec.catalogue, key=lambda i: (-counts[i], position[i]))
        self.popular_count = counts
        weights = self.rec.config.tasks.weights
        self.families = {name for name, w in weights.items() if w > 0}
        self.load_seconds = round(time.perf_counter() - started, 3)

    # -- user state ----------------------------------------------------------------------------
    def user_state(
        self, user_id: str, events: Sequence[StoredEvent], explicit: Sequence[str] | None = None
    ) -> UserState:
        """The user's history (explicit if given, else saved + positive feedback) and demotions.

        Items unknown to the model's index cannot be shown in a prompt and are left out.
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
            pool = sorted(pool, key=lambda i: (-self.popular_count[i], self.rec.item_pos[i]))
        ranked = [i for i in pool if i not in seen]
        ranked.sort(key=lambda i: i in query.state.demoted)  # stable: demoted last
        return [
            Ranked(i, float(self.popular_count[i]), i in query.state.demoted) for i in ranked[: query.k]
        ]

    def answer(self, queries: Sequence[Query]) -> list[Answer]:
        """Answers for many queries at once; model queries with the same beam count share one
        beam search (the micro-batch)."""
        import torch

        answers: list[Answer | None] = [None] * len(queries)
        groups: dict[tuple[int, bool], list[int]] = {}
        for n, q in enumerate(queries):
            if not q.state.known:
                answers[n] = Answer(self.popularity(q), "popularity", self.version)
                continue
            available, demoted = self._available(q)
            if not available:
                answers[n] = Answer([], "model", self.version)
                continue
            # Enough beams to fill k after demoted items move down.
            beams = min(q.k + demoted, available)
            groups.setdefault((beams, q.candidates is not None), []).append(n)
        for (beams, restricted), members in groups.items():
            batch = [queries[n] for n in members]
            prompts = self.rec.sequential_prompts(
                [q.user_id for q in batch], [q.state.history for q in batch]
            )
            excluded = [q.state.history if q.exclude_seen else [] for q in batch]
            allowed = [list(q.candidates) for q in batch] if restricted else None
            with torch.inference_mode():
                results = self.rec.generate_items(prompts, beams, excluded=excluded, allowed=allowed)
            for n, q, row in zip(members, batch, results):
                ranked = [Ranked(i, float(s), i in q.state.demoted) for i, s in row if i is not None]
                ranked.sort(key=lambda r: r.demoted)  # stable: best first within each part
                answers[n] = Answer(ranked[: q.k], "model", self.version)
        return answers  # type: ignore[return-value]

    def _available(self, q: Query) -> tuple[int, int]:
        """How many items the search may return for ``q``, and how many of those are demoted.

        Counted without building a catalogue-sized set: this runs for every request.
        """
        seen = set(q.state.history) if q.exclude_seen else set()
        if q.candidates is not None:
            pool = set(q.candidates) - seen
            return len(pool), len(q.state.demoted & pool)
        available = len(self.catalogue) - len(seen & self.catalogue)
        return available, len(q.state.demoted - seen)

    def score(self, pairs: Sequence[tuple[str, str, list[str]]]) -> list[float]:
        """P(yes) of the yes/no family for (user, item, history) triples."""
        import torch

        users, items, histories = zip(*pairs) if pairs else ((), (), ())
        with torch.inference_mode():
            return self.rec.score(list(users), list(items), histories=list(histories)).tolist()

    def rate(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        import torch

        users, items = zip(*pairs) if pairs else ((), ())
        with torch.inference_mode():
            return self.rec.predict_rating(list(users), list(items)).tolist()

    def title(self, item_id: str) -> str | None:
        return self.rec.titles.get(item_id)
