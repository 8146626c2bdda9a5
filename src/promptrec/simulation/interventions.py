"""Interventions: what a platform can do between the recommender's ranking and the slate shown,
so that a mitigation can be tested, not only watched.

Each intervention takes every visiting user's ``candidates`` (the recommender's top M, (U, M)
item positions in rank order, -1 = none) and picks a slate of K. They see only what the platform
knows: the ranking, item genres, popularity in the interaction log and the users' logged
histories; never the oracle. Registered by name in :data:`INTERVENTIONS`:

- ``none``: the top K as ranked.
- ``epsilon`` (``epsilon``=0.1): epsilon-greedy exploration; each slot, with probability
  ``epsilon``, shows a uniformly drawn catalogue item the user has not consumed instead.
- ``sample`` (``temperature``=2.0): Plackett-Luce sampling of K candidates with weights
  ``exp(-(rank - 1) / temperature)``, drawn with the Gumbel-top-k trick (rank-based, so the same
  temperature means the same thing for every model, whatever its score scale).
- ``mmr`` (``lam``=0.7): maximal marginal relevance (Carbonell & Goldstein 1998), greedy:
  ``lam * rel(i) - (1 - lam) * max_{j in slate} sim(i, j)``, ``rel = 1 - (rank - 1) / M`` and
  ``sim`` the cosine of the items' genre vectors.
- ``calibration`` (``lam``=0.5): popularity calibration (Abdollahpouri et al., "User-centered
  evaluation of popularity bias in recommender systems", UMAP 2021; after Steck, RecSys 2018).
  Items fall into head (the most popular items making up ``head_share`` of the log's
  interactions), tail (the least popular making up ``tail_share``) and mid; greedy, each slot
  takes the candidate maximising ``(1 - lam) * rel(i) - lam * JS(P_u, Q(slate + i))``, with
  ``P_u`` the user's logged head/mid/tail distribution and ``Q`` the slate's (Jensen-Shannon
  divergence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..core.registry import Registry


@dataclass
class SlateContext:
    """What interventions may know about the platform at a round (no oracle in here)."""

    genres: np.ndarray  # (n_items, C) unit genre vectors
    log_counts: np.ndarray  # (n_items,) interactions per item in the log
    histories: list[np.ndarray]  # per visiting user, the logged item positions
    n_items: int


INTERVENTIONS: Registry[Callable[..., "Intervention"]] = Registry("intervention")


class Intervention:
    name = "none"

    def __init__(self, **params: Any) -> None:
        if params:
            raise ValueError(f"intervention {self.name!r} takes no parameters, got {sorted(params)}")

    def apply(self, candidates: np.ndarray, k: int, ctx: SlateContext, rng: np.random.Generator) -> np.ndarray:
        """(U, K) item positions (-1 where fewer than K candidates exist)."""
        return _pad(candidates[:, :k], k)


def _pad(slates: np.ndarray, k: int) -> np.ndarray:
    if slates.shape[1] >= k:
        return slates[:, :k]
    return np.concatenate([slates, np.full((len(slates), k - slates.shape[1]), -1)], axis=1)


def _relevance(candidates: np.ndarray) -> np.ndarray:
    """(U, M) rank-based relevance in (0, 1], -inf for empty candidate slots."""
    m = candidates.shape[1]
    rel = np.broadcast_to(1.0 - np.arange(m) / m, candidates.shape).copy()
    rel[candidates < 0] = -np.inf
    return rel


def _greedy(candidates: np.ndarray, k: int, gain: Callable[[np.ndarray, list[np.ndarray]], np.ndarray]) -> np.ndarray:
    """Greedy slate building: each step takes the candidate with the best ``gain(taken, picked)``
    (U, M), taken = (U, M) bool of candidates already in the slate."""
    n, m = candidates.shape
    taken = candidates < 0
    picked: list[np.ndarray] = []
    rows = np.arange(n)
    for _ in range(min(k, m)):
        score = np.where(taken, -np.inf, gain(taken, picked))
        best = score.argmax(1)  # (U,)
        ok = np.isfinite(score[rows, best])
        picked.append(np.where(ok, candidates[rows, best], -1))
        taken[rows[ok], best[ok]] = True
    return _pad(np.stack(picked, 1) if picked else np.zeros((n, 0), dtype=np.int64), k)


@INTERVENTIONS.register("none")
class NoIntervention(Intervention):
    name = "none"


@INTERVENTIONS.register("epsilon")
class EpsilonGreedy(Intervention):
    name = "epsilon"

    def __init__(self, epsilon: float = 0.1) -> None:
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = float(epsilon)

    def apply(self, candidates, k, ctx, rng):
        slates = _pad(candidates[:, :k], k).copy()
        n = len(slates)
        explore = rng.random((n, k)) < self.epsilon
        draws = rng.integers(ctx.n_items, size=(n, k, 4))  # a few tries against collisions
        for r in np.flatnonzero(explore.any(1)):
            banned = set(ctx.histories[r].tolist()) | set(slates[r].tolist())
            for slot in np.flatnonzero(explore[r]):
                for item in draws[r, slot]:
                    if item not in banned:
                        banned.discard(slates[r, slot])
                        slates[r, slot] = item
                        banned.add(int(item))
                        break
        return slates


@INTERVENTIONS.register("sample")
class TemperatureSampling(Intervention):
    name = "sample"

    def __init__(self, temperature: float = 2.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def apply(self, candidates, k, ctx, rng):
        m = candidates.shape[1]
        keys = -np.arange(m)[None, :] / self.temperature + rng.gumbel(size=candidates.shape)
        keys[candidates < 0] = -np.inf
        order = np.argsort(-keys, axis=1, kind="stable")[:, :k]
        slates = np.take_along_axis(candidates, order, 1)
        return _pad(slates, k)


@INTERVENTIONS.register("mmr")
class MMR(Intervention):
    name = "mmr"

    def __init__(self, lam: float = 0.7) -> None:
        if not 0 <= lam <= 1:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        self.lam = float(lam)

    def apply(self, candidates, k, ctx, rng):
        rel = _relevance(candidates)
        vectors = ctx.genres[np.where(candidates >= 0, candidates, 0)]  # (U, M, C)
        max_sim = np.zeros(candidates.shape)

        def gain(taken, picked):
            if picked:
                last = ctx.genres[np.where(picked[-1] >= 0, picked[-1], 0)]  # (U, C)
                sim = np.einsum("umc,uc->um", vectors, last) * (picked[-1] >= 0)[:, None]
                np.maximum(max_sim, sim, out=max_sim)
            return self.lam * rel - (1 - self.lam) * max_sim

        return _greedy(candidates, k, gain)


def popularity_groups(counts: np.ndarray, head_share: float = 0.2, tail_share: float = 0.2) -> np.ndarray:
    """(n_items,) 0 = head, 1 = mid, 2 = tail by interaction counts (module doc, calibration)."""
    order = np.argsort(-counts, kind="stable")
    share = np.cumsum(counts[order]) / max(counts.sum(), 1)
    groups = np.ones(len(counts), dtype=np.int64)
    groups[order[share <= head_share]] = 0
    groups[order[0]] = 0  # the most popular item is head even when it alone exceeds head_share
    groups[order[share > 1 - tail_share]] = 2
    return groups


def _js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence of distributions along the last axis."""
    mid = (p + q) / 2

    def kl(a, b):
        return np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / np.where(b > 0, b, 1)), 0).sum(-1)

    return (kl(p, mid) + kl(q, mid)) / 2


@INTERVENTIONS.register("calibration")
class PopularityCalibration(Intervention):
    name = "calibration"

    def __init__(self, lam: float = 0.5, head_share: float = 0.2, tail_share: float = 0.2) -> None:
        if not 0 <= lam <= 1:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        self.lam, self.head_share, self.tail_share = float(lam), float(head_share), float(tail_share)

    def apply(self, candidates, k, ctx, rng):
        groups = popularity_groups(ctx.log_counts, self.head_share, self.tail_share)
        target = np.stack([np.bincount(groups[h], minlength=3) for h in ctx.histories]).astype(float)
        target /= np.maximum(target.sum(1, keepdims=True), 1)  # (U, 3) the user's logged mix
        cand_group = np.eye(3)[groups[np.where(candidates >= 0, candidates, 0)]]  # (U, M, 3)
        rel = _relevance(candidates)
        counts = np.zeros((len(candidates), 3))

        def gain(taken, picked):
            if picked:
                counts[np.flatnonzero(picked[-1] >= 0), groups[picked[-1][picked[-1] >= 0]]] += 1
            mix = counts[:, None, :] + cand_group  # (U, M, 3) slate mix if the candidate is added
            mix /= mix.sum(-1, keepdims=True)
            return (1 - self.lam) * rel - self.lam * _js(target[:, None, :], mix)

        return _greedy(candidates, k, gain)


def build_intervention(name: str, **params: Any) -> Intervention:
    return INTERVENTIONS.get(name)(**params)


__all__ = ["INTERVENTIONS", "Intervention", "SlateContext", "build_intervention", "popularity_groups"]
