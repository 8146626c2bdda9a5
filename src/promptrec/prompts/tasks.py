"""Task families: how a user's training history becomes (field values -> prompt) examples.

A family knows which fields it supplies; the template file decides the wording. Every example is
drawn from training interactions only, so no validation or test item ever reaches a training
prompt (``tests/test_tasks.py`` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Mapping, Sequence

import numpy as np

from ..core.registry import Registry

TASKS: Registry[type["TaskFamily"]] = Registry("task family")


@dataclass
class TaskContext:
    """What task families need to render fields, all derived from the training split."""

    sequences: list[list[str]]  # per user (row order = ``users``), chronological training items
    users: list[str]
    catalogue: list[str]  # every recommendable item id
    item_text: Callable[[str], str]  # the indexer's token form of an item
    user_text: Callable[[str], str]
    titles: Mapping[str, str] = field(default_factory=dict)
    ratings: list[list[float]] | None = None  # aligned with ``sequences``; None without ratings
    max_history: int = 20
    train_candidates: int = 20  # list size for the choose family during training
    window_stride: int = 0  # the sequence family's windows over long histories (0: one random window)

    def history_text(self, items: Sequence[str]) -> str:
        return " ".join(self.item_text(i) for i in items[-self.max_history :]) if items else "none"

    def title(self, item: str) -> str:
        return self.titles.get(item) or "unknown title"

    def sample_negatives(self, rng: np.random.Generator, exclude: set[str], n: int) -> list[str]:
        """``n`` distinct catalogue items outside ``exclude``, by rejection (catalogue >> history)."""
        if len(self.catalogue) - len(exclude) < n:
            raise ValueError(f"cannot draw {n} negatives: catalogue too small")
        out: list[str] = []
        while len(out) < n:
            for j in rng.integers(0, len(self.catalogue), size=2 * (n - len(out)) + 4):
                item = self.catalogue[j]
                if item not in exclude and item not in out:
                    out.append(item)
                    if len(out) == n:
                        break
        return out


class TaskFamily:
    """A family of examples. ``size()`` base examples; ``example(i, rng)`` renders fields for one."""

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]
    # The template family that words this family's examples (default: its own name).
    template_family: ClassVar[str | None] = None
    # True when every item token of the prompt is the user's own history, in order, so a causal
    # LM may learn each of them from the ones before (``train.history_loss``). Not for families
    # whose prompts also show other items (random negatives, candidate lists).
    history_only: ClassVar[bool] = False

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    def size(self) -> int:
        raise NotImplementedError

    def example(self, i: int, rng: np.random.Generator) -> dict[str, str]:
        raise NotImplementedError

    def length(self, i: int) -> int:
        """A cheap proxy for the prompt length of example ``i`` (used to batch similar lengths)."""
        return 0

    def first_target(self, i: int) -> int:
        """History-only families: the first item of example ``i``'s prompt that is a target under
        ``train.history_loss`` (the items before it are learned in another example)."""
        return 0


class _PositionFamily(TaskFamily):
    """Families whose base examples are (user, position t >= 1) pairs of training sequences."""

    def __init__(self, ctx: TaskContext) -> None:
        super().__init__(ctx)
        lengths = np.array([len(s) for s in ctx.sequences])
        self.user_of = np.repeat(np.arange(len(lengths)), np.maximum(lengths - 1, 0))
        starts = np.concatenate([[0], np.cumsum(np.maximum(lengths - 1, 0))[:-1]])
        self.pos_of = np.arange(len(self.user_of)) - np.repeat(starts, np.maximum(lengths - 1, 0)) + 1

    def size(self) -> int:
        return len(self.user_of)

    def length(self, i: int) -> int:
        return min(int(self.pos_of[i]), self.ctx.max_history)

    def _at(self, i: int) -> tuple[str, list[str], int]:
        u = int(self.user_of[i])
        return self.ctx.users[u], self.ctx.sequences[u], int(self.pos_of[i])


@TASKS.register("sequential")
class Sequential(_PositionFamily):
    """Next item from the items before it."""

    name = "sequential"
    fields = ("user", "history", "target")
    history_only = True

    def example(self, i: int, rng: np.random.Generator) -> dict[str, str]:
        user, seq, t = self._at(i)
        return {
            "user": self.ctx.user_text(user),
            "history": self.ctx.history_text(seq[:t]),
            "target": self.ctx.item_text(seq[t]),
        }


@TASKS.register("sequence")
class WholeSequence(TaskFamily):
    """One example per user: the most recent ``max_history`` training items and the item after.

    With ``train.history_loss`` a causal LM learns every item of the sequence from the ones before
    it, so one example carries what ``sequential`` spreads over one example per position, and an
    epoch is one pass over users instead of positions. A sequence longer than the window ends at
    a random position, so over the epochs every item is a target.

    With ``window_stride`` s, a sequence longer than the window is instead cut into windows of
    ``max_history`` items ending s items apart (from its last item back, the first one at the
    start): the first window learns all of its items, every later one only the s it adds, so each
    position is a target once per epoch and, past the first window, after at least
    ``max_history - s`` items of its history, close to what prediction reads.
    """

    name = "sequence"
    fields = ("user", "history", "target")
    template_family = "sequential"
    history_only = True

    def __init__(self, ctx: TaskContext) -> None:
        super().__init__(ctx)
        # (user row, index of the target or None for a random one, first history item learned)
        self.rows: list[tuple[int, int | None, int]] = []
        window, stride = ctx.max_history, ctx.window_stride
        for u, seq in enumerate(ctx.sequences):
            last = len(seq) - 1
            if last < 1:
                continue
            if not stride or last <= window:
                self.rows.append((u, None, 0))
                continue
            for end in range(last, window, -stride):
                # Positions up to the previous window's end (at least the first window's) are learned there.
                before = max(end - stride, window)
                self.rows.append((u, end, before - (end - window) + 1))
            self.rows.append((u, window, 0))

    def size(self) -> int:
        return len(self.rows)

    def length(self, i: int) -> int:
        return min(len(self.ctx.sequences[self.rows[i][0]]) - 1, self.ctx.max_history)

    def first_target(self, i: int) -> int:
        return self.rows[i][2]

    def example(self, i: int, rng: np.random.Generator) -> dict[str, str]:
        u, t, _ = self.rows[i]
        seq = self.ctx.sequences[u]
        if t is None:
            t = len(seq) - 1
            if t > self.ctx.max_history:
                t = int(rng.integers(self.ctx.max_history, t + 1))
        return {
            "user": self.ctx.user_text(self.ctx.users[u]),
            "history": self.ctx.history_text(seq[:t]),
            "target": self.ctx.item_text(seq[t]),
        }


@TASKS.register("yesno")
class YesNo(_PositionFamily):
    """Is this item the user's next one? Half the examples are real next items, half random."""

    name = "yesno"
    fields = ("user", "history", "item", "title", "answer")

    def example(self, i: int, rng: np.random.Generator) -> dict[str, str]:
        user, seq, t = self._at(i)
        if rng.random() < 0.5:
            item, answer = seq[t], "yes"
        else:
            item, answer = self.ctx.sample_negatives(rng, set(seq), 1)[0], "no"
        return {
            "user": self.ctx.user_text(user),
            "history": self.ctx.history_text(seq[:t]),
            "item": self.ctx.item_text(item),
            "title": self.ctx.title(item),
            "answer": answer,
        }


@TASKS.register("choose")
class Choose(_PositionFamily):
    """Pick the real next item from a shuffled candidate list."""

    name = "choose"
    fields = ("user", "history", "candidates", "target")

    def example(self, i: int, rng: np.random.Generator) -> dict[str, str]:
        user, seq, t = self._at(i)
        cands = self.ctx.sample_negatives(rng, set(seq), self.ctx.train_candidates - 1) + [seq[t]]
        rng.shuffle(cands)
        return {
            "user": self.ctx.user_text(user),
            "history": self.ctx.history_text(seq[:t]),
            "candidates": " ".join(self.ctx.item_text(c) for c in cands),
            "target": self.ctx.item_text(seq[t]),
        }


def rating_text(value: float) -> str:
    """Ratings are written as one digit 1-5 (half stars round half up, as people read them)."""
    return str(int(min(5, max(1, np.floor(value + 0.5)))))


@TASKS.register("rating")
class Rating(TaskFamily):
    """The star rating of a training interaction."""

    name = "rating"
    fields = ("user", "item", "title", "rating")

    def __init__(self, ctx: TaskContext) -> None:
        super().__init__(ctx)
        if ctx.ratings is None:
            raise ValueError("the rating family needs a dataset with ratings")
        self.pairs = [(u, j) for u, r in enumerate(ctx.ratings) for j in range(len(r)) if r[j] == r[j]]

    def size(self) -> int:
        return len(self.pairs)

    def example(self, i: int, rng: np.random.Generator) -> dict[str, str]:
        u, j = self.pairs[i]
        item = self.ctx.sequences[u][j]
        return {
            "user": self.ctx.user_text(self.ctx.users[u]),
            "item": self.ctx.item_text(item),
            "title": self.ctx.title(item),
            "rating": rating_text(self.ctx.ratings[u][j]),  # type: ignore[index]
        }


def mixture_plan(
    families: Mapping[str, TaskFamily], weights: Mapping[str, float], total: int, rng: np.random.Generator
) -> list[tuple[str, int]]:
    """One epoch of (family, base-example index) pairs.

    Each family gets ``total * w / sum(w)`` examples, drawn as a permutation of its base examples
    (tiled when it needs more than it has), so a family with weight 1 alone sees each training
    position exactly once per epoch. The pairs are then shuffled together.
    """
    wsum = sum(weights[f] for f in families)
    plan: list[tuple[str, int]] = []
    for name, fam in families.items():
        n = int(round(total * weights[name] / wsum))
        if fam.size() == 0 or n == 0:
            continue
        reps = -(-n // fam.size())
        idx = np.concatenate([rng.permutation(fam.size()) for _ in range(reps)])[:n]
        plan.extend((name, int(i)) for i in idx)
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def length_batches(
    plan: list[tuple[str, int]],
    families: Mapping[str, TaskFamily],
    batch_size: int,
    rng: np.random.Generator,
    window: int = 64,
) -> list[list[int]]:
    """Batches of plan positions with similar prompt lengths, in random order.

    The plan is cut into windows of ``window`` batches; each window is sorted by length and cut
    into batches, and all batches are shuffled. Every example is still used exactly once per
    epoch, but padding (the cost of a batch is set by its longest prompt) shrinks a lot.
    """
    batches: list[list[int]] = []
    span = batch_size * window
    for start in range(0, len(plan), span):
        idx = np.arange(start, min(start + span, len(plan)))
        lengths = np.array([families[plan[i][0]].length(plan[i][1]) for i in idx])
        idx = idx[np.argsort(lengths, kind="stable")]
        batches += [idx[j : j + batch_size].tolist() for j in range(0, len(idx), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]
