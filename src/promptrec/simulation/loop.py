"""The feedback loop: recommend, simulated users react, the log grows, the model is updated.

A :class:`World` is what all runs of a config share: the real data, the oracle fitted on all of
it (:mod:`.oracle`), the item genres, the user groups, the **initial log** (the real training and
validation events of a leave-one-out split) and the **held-out set** (each user's real last
event). One run (:func:`run_one`) is one recommender x update strategy x intervention x seed:

1. round 0: the recommender is fitted on the initial log;
2. each round, every active user visits (or a seeded ``user_share`` of them); the recommender
   ranks ``candidates`` items per user in one batched ``recommend`` call, given each user's whole
   logged history (served models read the live history; their parameters change only through
   updates); the intervention picks the slate of K; the choice model draws examinations, clicks,
   conversions and departures (items shown ``skip_limit`` times to a user without a click are
   dropped from that user's candidates first); clicks are appended to the log (rating 4 for a conversion, 2
   otherwise); a click on a user's own held-out item is not logged, so that no model ever trains
   on the held-out target;
3. after every ``every`` rounds the update strategy runs: ``none`` keeps the model, ``retrain``
   fits a fresh model on the log, ``finetune`` continues training the current model on recent
   events (warm start; models that cannot warm-start are retrained, and the run's notes say so);
4. every ``eval_every`` rounds, the held-out accuracy (HR@K, NDCG@K over all items, the initial
   history as input and excluded) shows what updates do to the model's fit of real behaviour
   (forgetting), with the inputs held fixed so that only the model changes.

**What a recommender sees**: only :class:`~promptrec.data.Split` objects built from the log
(:func:`log_split`) and histories of logged item ids. The oracle, the choice model and the user
state never leave this module's simulator side. The reference policies ``oracle`` (ranks by the
ground truth: the ceiling) and ``random`` are not recommenders and are marked as such.

Randomness: every draw of a round comes from a generator seeded by (seed, round, purpose), and
every fit by a seed derived from (seed, round), so runs are deterministic and a run resumed from a
checkpoint gives the same rounds as one that was never interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.recommender import Recommender, build_recommender, load_recommender
from ..data.base import InteractionData
from ..data.split import Split, leave_one_out
from .choice import ChoiceModel, UserState, item_genre_vectors
from .config import InterventionEntry, RecommenderEntry, SimulationConfig, UpdateEntry
from .interventions import SlateContext, build_intervention
from .metrics import heldout_accuracy, round_metrics
from .oracle import Oracle, fit_oracle

log = logging.getLogger("promptrec")

REFERENCE_POLICIES = ("oracle", "random")
ROUNDS_FILE = "rounds.jsonl"


# -- the world shared by the runs of a config ----------------------------------------------------
@dataclass
class World:
    data: InteractionData
    oracle: Oracle
    users: pd.Index  # simulated users (external ids); position = user index everywhere
    items: pd.Index  # the catalogue; position = item index everywhere
    genres: np.ndarray  # (n_items, C) unit genre vectors
    initial_log: pd.DataFrame  # user, item (positions), timestamp, rating: the real train + valid events
    heldout: np.ndarray  # (n_users,) held-out item position per user, -1 = none
    popularity: np.ndarray  # (n_items,) share of users with the item in the initial log
    groups: dict[str, tuple[np.ndarray, list[str]]]


def user_groups(data: InteractionData, users: pd.Index, activity: np.ndarray, age_split: int = 35):
    """grouping -> (code per user position, -1 = unknown; names): activity fifths (most active
    first), and where the data has them gender (M, F) and age (younger, older than ``age_split``)."""
    order = np.argsort(-activity, kind="stable")
    fifth = np.empty(len(users), dtype=np.int64)
    fifth[order] = np.minimum(np.arange(len(users)) * 5 // max(len(users), 1), 4)
    groups = {"activity": (fifth, ["q1_most", "q2", "q3", "q4", "q5_least"])}
    table = data.users
    if table is not None and "gender" in table:
        gender = table["gender"].reindex(users).astype(str).to_numpy()
        groups["gender"] = (np.select([gender == "M", gender == "F"], [0, 1], -1), ["M", "F"])
    if table is not None and "age" in table:
        age = pd.to_numeric(table["age"].reindex(users), errors="coerce").to_numpy(dtype=float)
        code = np.where(np.isnan(age), -1, (age >= age_split).astype(np.int64))
        groups["age"] = (code, [f"under{age_split}", f"{age_split}plus"])
    return groups


def build_world(
    cfg: SimulationConfig, oracle_dir: str | Path | None = None, data: InteractionData | None = None
) -> World:
    """Load the data (unless given), fit the oracle (or load it from ``oracle_dir`` when saved there
    before) and set up the initial log, the held-out set and the user groups."""
    from ..pipeline import load_data

    data = data if data is not None else load_data(cfg.data)
    if oracle_dir is not None and (Path(oracle_dir) / "oracle.json").exists():
        oracle = Oracle.load(oracle_dir)
    else:
        oracle = fit_oracle(data, cfg.oracle)
        if oracle_dir is not None:
            oracle.save(oracle_dir)
    users, items = oracle.users, oracle.items
    split = leave_one_out(data)
    initial = pd.concat([split.train, split.valid]).sort_values(["timestamp"], kind="stable")
    initial = pd.DataFrame(
        {
            "user": users.get_indexer(initial["user_id"]),
            "item": items.get_indexer(initial["item_id"]),
            "timestamp": initial["timestamp"].to_numpy(dtype=float),
            "rating": initial["rating"].to_numpy(dtype=float),
        }
    )
    heldout = np.full(len(users), -1, dtype=np.int64)
    heldout[users.get_indexer(split.test["user_id"])] = items.get_indexer(split.test["item_id"])
    activity = np.bincount(initial["user"], minlength=len(users))
    distinct = initial.drop_duplicates(["user", "item"])
    popularity = np.bincount(distinct["item"], minlength=len(items)) / len(users)
    categories = data.items["categories"].reindex(items).tolist() if "categories" in data.items else None
    genres, _ = item_genre_vectors(categories, len(items))
    return World(
        data, oracle, users, items, genres, initial, heldout, popularity,
        user_groups(data, users, activity, cfg.age_split),
    )  # fmt: skip


# -- what recommenders are given ---------------------------------------------------------------
def log_frame(world: World, user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, rating: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": world.users.to_numpy()[user],
            "item_id": world.items.to_numpy()[item],
            "timestamp": timestamp,
            "rating": rating,
        }
    )


def log_split(events: pd.DataFrame, catalogue: pd.DataFrame) -> Split:
    """The split a recommender is fitted on: everything logged, each user's newest event held as
    validation (for early stopping), the rest as training. ``test`` repeats ``valid``, so the
    ``"test"`` history is the whole log. Holds log events and the catalogue's item table only."""
    data = InteractionData(events, catalogue)
    df = data.interactions
    from_end = df.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    sizes = df.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    valid = (from_end == 0) & (sizes >= 2)
    return Split(
        data=data,
        train=df[~valid].reset_index(drop=True),
        valid=df[valid].reset_index(drop=True),
        test=df[valid].reset_index(drop=True),
    )


class Policy:
    """Adapter giving every recommender the same two calls: ``fit`` on a log split and
    ``candidates`` for (users, their histories)."""

    def __init__(self, entry: RecommenderEntry, seed: int) -> None:
        self.entry = entry
        self.seed = seed
        self.model: Recommender | None = None
        self.reference = entry.name in REFERENCE_POLICIES

    def fit(self, split: Split, fit_seed: int) -> None:
        if self.reference:
            return
        model = build_recommender(self.entry.name, self.entry.params, seed=fit_seed)
        model.progress = False
        self.model = model.fit(split)

    def finetune(self, split: Split, fit_seed: int, update: UpdateEntry) -> str | None:
        """Warm-start training on ``split``; returns a note when the model had to be retrained."""
        if self.reference:
            return None
        if self.model is None or not self.model.warm_starts:
            self.fit(split, fit_seed)
            return f"{self.entry.key} cannot warm-start: retrained from scratch instead"
        # The update's seed is this round's; the other settings are the model's own.
        self.model.update(split, epochs=update.epochs, seed=fit_seed)
        return None

    def candidates(
        self, world: World, users: np.ndarray, histories: list[np.ndarray], m: int, rng: np.random.Generator
    ) -> np.ndarray:
        """(U, m) item positions ranked best first (-1 = fewer), the histories excluded."""
        n_items = len(world.items)
        if self.entry.name == "oracle":
            scores = world.oracle.prob_rows(users)  # (U, n_items)
        elif self.entry.name == "random":
            scores = rng.random((len(users), n_items))
        else:
            return self._recommend(world, users, histories, m)
        rows = np.repeat(np.arange(len(users)), [len(h) for h in histories])
        scores[rows, np.concatenate([np.zeros(0, dtype=np.int64), *histories])] = -np.inf
        top = np.argpartition(-scores, min(m, n_items - 1), axis=1)[:, :m]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        ranked = np.take_along_axis(top, order, 1)
        return np.where(np.isfinite(np.take_along_axis(scores, ranked, 1)), ranked, -1)

    def _recommend(self, world: World, users: np.ndarray, histories: list[np.ndarray], m: int) -> np.ndarray:
        ids = world.users.to_numpy()[users].tolist()
        item_ids = world.items.to_numpy()
        external = {u: item_ids[h].tolist() for u, h in zip(ids, histories)}
        # The served form of every model: its parameters as fitted, the live history as input
        # and exclusion.
        recs = self.model.recommend(ids, k=m, exclude_seen=True, stage="test", histories=external)
        out = np.full((len(users), m), -1, dtype=np.int64)
        row = pd.Index(ids).get_indexer(recs["user_id"])
        col = recs["rank"].to_numpy(dtype=np.int64) - 1
        item = world.items.get_indexer(recs["item_id"])
        ok = (row >= 0) & (col < m) & (item >= 0)
        out[row[ok], col[ok]] = item[ok]
        return out

    def save(self, directory: Path) -> None:
        if self.model is not None:
            self.model.save_pretrained(directory)

    def load(self, directory: Path) -> None:
        if not self.reference and (directory / "promptrec_config.json").exists():
            self.model = load_recommender(directory)


# -- one run -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    recommender: RecommenderEntry
    update: UpdateEntry
    intervention: InterventionEntry
    seed: int

    @property
    def name(self) -> str:
        return f"{self.recommender.key}__{self.update.key}__{self.intervention.key}__seed{self.seed}"


def jobs(cfg: SimulationConfig) -> list[Job]:
    return [
        Job(r, u, i, s)
        for r in cfg.recommenders
        for u in cfg.updates
        for i in cfg.interventions
        for s in cfg.seeds
        # Reference policies learn nothing: one update strategy is enough for them.
        if not (r.name in REFERENCE_POLICIES and u is not cfg.updates[0])
    ]


def _rng(seed: int, round_: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, round_, purpose])


def _fit_seed(seed: int, round_: int) -> int:
    return seed * 100_003 + round_


class _Log:
    """The growing interaction log as position arrays, plus each user's history list."""

    def __init__(self, world: World) -> None:
        init = world.initial_log
        self.user = init["user"].to_numpy(dtype=np.int64)
        self.item = init["item"].to_numpy(dtype=np.int64)
        self.timestamp = init["timestamp"].to_numpy(dtype=float)
        self.rating = init["rating"].to_numpy(dtype=float)
        self.start = float(self.timestamp.max(initial=0.0)) + 1.0
        self.n_users = len(world.users)

    def append(self, user, item, timestamp, rating) -> None:
        self.user = np.concatenate([self.user, user])
        self.item = np.concatenate([self.item, item])
        self.timestamp = np.concatenate([self.timestamp, timestamp])
        self.rating = np.concatenate([self.rating, rating])

    def histories(self, users: np.ndarray) -> list[np.ndarray]:
        order = np.lexsort((self.timestamp, self.user))  # by user, then time (stable: log order)
        bounds = np.searchsorted(self.user[order], np.arange(self.n_users + 1))
        items = self.item[order]
        return [items[bounds[u] : bounds[u + 1]] for u in users]

    def frame(self, world: World, mask: np.ndarray | None = None) -> pd.DataFrame:
        sel = slice(None) if mask is None else mask
        return log_frame(world, self.user[sel], self.item[sel], self.timestamp[sel], self.rating[sel])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"log_user": self.user, "log_item": self.item, "log_timestamp": self.timestamp, "log_rating": self.rating}

    def restore(self, arrays) -> None:
        self.user, self.item = arrays["log_user"], arrays["log_item"]
        self.timestamp, self.rating = arrays["log_timestamp"], arrays["log_rating"]


def _recent_split(world: World, events: _Log, since: float, update: UpdateEntry, rng) -> Split:
    """The fine-tuning data: per user, the events logged since the last update plus ``context``
    older ones before them (prompt context); a seeded ``replay`` share of users give their whole
    log instead (rehearsal against forgetting). Users without new events are left out."""
    frame = events.frame(world)
    frame["_new"] = events.timestamp >= since
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    users = frame.loc[frame["_new"], "user_id"].unique()
    replayed = set(users[rng.random(len(users)) < update.replay].tolist()) if update.replay else set()
    frame = frame[frame["user_id"].isin(users)].reset_index(drop=True)
    # New events are each user's newest: keep those and `context` events before them.
    new_count = frame.groupby("user_id")["_new"].transform("sum")
    from_end = frame.groupby("user_id").cumcount(ascending=False)
    keep = (from_end < new_count + update.context) | frame["user_id"].isin(replayed)
    return log_split(frame[keep].drop(columns="_new"), world.data.items)


def drop_skipped(cands: np.ndarray, users: np.ndarray, state: UserState, n_items: int, limit: int) -> np.ndarray:
    """(U, m) candidates without the items already shown ``limit`` times to their user (moved to
    the end as -1, the order of the rest kept). Clicked items are in the history, hence never
    candidates: what is dropped was shown ``limit`` times and never clicked. The counts are
    impressions, which a platform logs itself; no recommender is given them."""
    codes = users[:, None].astype(np.int64) * n_items + np.where(cands >= 0, cands, 0)
    drop = (state.times_shown(codes) >= limit) | (cands < 0)
    order = np.argsort(drop, axis=1, kind="stable")
    return np.where(np.take_along_axis(drop, order, 1), -1, np.take_along_axis(cands, order, 1))


def run_one(
    cfg: SimulationConfig,
    job: Job,
    world: World,
    directory: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) one simulation into ``directory``; returns its per-round rows."""
    out = Path(directory)
    rounds_path, ckpt = out / ROUNDS_FILE, out / "checkpoint"
    rows: list[dict[str, Any]] = []
    if rounds_path.exists() and not resume:
        raise FileExistsError(f"{out} already holds a run: pass resume, or choose another output directory")
    out.mkdir(parents=True, exist_ok=True)

    choice = ChoiceModel(world.oracle, world.genres, cfg.choice)
    state = choice.initial_state()
    events = _Log(world)
    policy = Policy(job.recommender, job.seed)
    intervention = build_intervention(job.intervention.name, **job.intervention.params)
    notes: list[str] = []
    start_round, last_update_time = 1, events.start
    heldout_users = np.flatnonzero(world.heldout >= 0)
    heldout_codes = heldout_users * len(world.items) + world.heldout[heldout_users]
    initial_histories = events.histories(heldout_users)

    if resume and (ckpt / "meta.json").exists():
        meta = json.loads((ckpt / "meta.json").read_text())
        arrays = np.load(ckpt / "state.npz", allow_pickle=False)
        for key in state.arrays():
            setattr(state, key, arrays[key])
        events.restore(arrays)
        policy.load(ckpt / "model")
        start_round, last_update_time, notes = meta["round"] + 1, meta["last_update_time"], meta["notes"]
        rows = [json.loads(line) for line in rounds_path.read_text().splitlines()[: meta["round"]]]
    else:
        t = time.perf_counter()
        policy.fit(log_split(events.frame(world), world.data.items), _fit_seed(job.seed, 0))
        notes.append(f"initial fit {time.perf_counter() - t:.1f}s")
    rounds_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model_changed = not (resume and start_round > 1)

    bar = range(start_round, cfg.rounds + 1)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc=job.name, unit="round", initial=start_round - 1, total=cfg.rounds)
    for r in bar:
        t0 = time.perf_counter()
        active = np.flatnonzero(state.active)
        visit = _rng(job.seed, r, 0).random(len(active)) < cfg.user_share
        users = active[visit] if cfg.user_share < 1 else active
        histories = events.histories(users)
        if cfg.skip_limit is None:
            cands = policy.candidates(world, users, histories, cfg.candidates, _rng(job.seed, r, 1))
        else:
            # Ask for enough extra items to make up for the ones dropped for being skipped.
            worn = state.shown_codes[state.shown_counts >= cfg.skip_limit] // len(world.items)
            extra = int(np.bincount(worn, minlength=len(world.users))[users].max(initial=0))
            cands = policy.candidates(world, users, histories, cfg.candidates + extra, _rng(job.seed, r, 1))
            cands = drop_skipped(cands, users, state, len(world.items), cfg.skip_limit)[:, : cfg.candidates]
        t1 = time.perf_counter()
        counts = np.bincount(events.item, minlength=len(world.items)).astype(float)
        ctx = SlateContext(world.genres, counts, histories, len(world.items))
        slates = intervention.apply(cands, cfg.slate_size, ctx, _rng(job.seed, r, 2))
        t2 = time.perf_counter()
        outcome = choice.react(state, users, slates, _rng(job.seed, r, 3))
        uu, kk = np.nonzero(outcome.clicked)
        clicked_user, clicked_item = users[uu], slates[uu, kk]
        logged = ~np.isin(clicked_user * len(world.items) + clicked_item, heldout_codes)
        stamp = events.start + r + kk / (cfg.slate_size + 1)  # within a round, in slate order
        events.append(
            clicked_user[logged], clicked_item[logged], stamp[logged],
            np.where(outcome.converted[uu, kk], 4.0, 2.0)[logged],
        )  # fmt: skip
        row = {"round": r, **round_metrics(
            outcome, state.active, len(world.items), world.popularity, world.genres, world.groups,
        )}  # fmt: skip
        t3 = time.perf_counter()
        row.update(recommend_seconds=round(t1 - t0, 4), intervention_seconds=round(t2 - t1, 4),
                   round_seconds=round(t3 - t0, 4))  # fmt: skip

        if (r - 1) % cfg.eval_every == 0 or r == cfg.rounds:
            ranked = policy.candidates(world, heldout_users, initial_histories, cfg.eval_k, _rng(job.seed, r, 4))
            acc = heldout_accuracy(ranked, world.heldout[heldout_users])
            row.update({f"{k}@{cfg.eval_k}": v for k, v in acc.items()})
        row["eval_seconds"] = round(time.perf_counter() - t3, 4)

        t4 = time.perf_counter()
        update = job.update
        if update.strategy != "none" and r % update.every == 0 and r < cfg.rounds:
            fit_seed = _fit_seed(job.seed, r)
            if update.strategy == "retrain":
                policy.fit(log_split(events.frame(world), world.data.items), fit_seed)
            else:
                recent = _recent_split(world, events, last_update_time, update, _rng(job.seed, r, 5))
                note = policy.finetune(recent, fit_seed, update)
                if note and note not in notes:
                    notes.append(note)
                    log.warning(note)
            last_update_time = events.start + r + 1
            model_changed = True
            row["updated"] = True
        row["update_seconds"] = round(time.perf_counter() - t4, 4)
        rows.append(row)
        with rounds_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

        if r % cfg.checkpoint_every == 0 or r == cfg.rounds:
            ckpt.mkdir(parents=True, exist_ok=True)
            if model_changed:
                policy.save(ckpt / "model")
                model_changed = False
            np.savez(ckpt / "state.npz", **state.arrays(), **events.arrays())
            meta = {"round": r, "last_update_time": last_update_time, "notes": notes, "job": job.name}
            (ckpt / "meta.json").write_text(json.dumps(meta))
    (out / "notes.json").write_text(json.dumps({"job": job.name, "notes": notes}, indent=2))
    return rows


# -- many runs ---------------------------------------------------------------------------------
def _worker(args: tuple[dict, Job, str, bool, int]) -> str:
    cfg_dict, job, output, resume, threads = args
    import torch

    torch.set_num_threads(threads)
    cfg = SimulationConfig.model_validate(cfg_dict)
    world = build_world(cfg, Path(output) / "oracle")
    run_one(cfg, job, world, Path(output) / "runs" / job.name, resume=resume, progress=False)
    return job.name


def simulate(
    cfg: SimulationConfig,
    output: str | Path,
    resume: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Run every job of ``cfg`` into ``output`` (``workers`` processes), then write the combined
    ``rounds.jsonl``, the plots and ``summary.md``; returns all rows as a table."""
    from .report import write_report

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    world = build_world(cfg, out / "oracle")  # fits the oracle once, before any worker starts
    todo = jobs(cfg)
    if workers <= 1:
        for job in todo:
            run_one(cfg, job, world, out / "runs" / job.name, resume=resume, progress=progress)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // workers)
        args = [(cfg.to_dict(), job, str(out), resume, threads) for job in todo]
        # spawn: forking a process that has torch threads running can deadlock.
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_worker, a) for a in args]
            done = as_completed(futures)
            if progress:
                from tqdm.auto import tqdm

                done = tqdm(done, total=len(futures), desc="runs", unit="run")
            for future in done:
                future.result()
    return write_report(cfg, out, world, todo)


__all__ = ["Job", "Policy", "World", "build_world", "jobs", "log_split", "run_one", "simulate", "user_groups"]
