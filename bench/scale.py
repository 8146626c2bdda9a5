"""How cost grows with the data: time and peak memory of every recommender and item indexer on
synthetic logs from 10^4 to 10^6 users and items, with the growth exponent of each step.

Data: :func:`promptrec.data.loaders.synthetic.load_synthetic` (Zipf item popularity with exponent
1, log-normal history lengths with mean 15, at least 3 events per user), split leave-one-out.
Two sweeps share one grid: users grow at a fixed catalogue (``--base-items``), items grow at a
fixed user count (``--base-users``).

For each cell (users, items) the log is generated once; then every recommender and indexer runs
in a process of its own, forked from the one holding the data, so that one's peak memory never
counts in another's. Per recommender:

- ``fit_seconds``: ``fit(split)``. Counting models (popularity, item-kNN) fit fully. Iterative
  models fit a *bounded* run: one epoch cut to ``--steps`` optimisation steps (BPR: ``--bpr-steps``),
  early-stopping validation on 1,000 users (the prompt LM: 200). Their full-convergence cost is
  ``train_seconds_per_1k_examples`` x examples per epoch x epochs; the setup before the first step
  (histories, indices, training rows, tokenizer) is in ``fit_seconds`` whole.
- ``eval_*``: :func:`~promptrec.evaluation.ranking.evaluate_rankings` (all items ranked, history
  excluded, top 20) on a seeded block of ``--eval-users`` test users (all users when there are
  fewer). ``eval_seconds_all_users`` extrapolates the time inside ``recommend`` linearly to
  every test user; ``eval_wall_seconds`` is the whole call, the harness's own work included.
- ``recommend_seconds``: one ``recommend([user], k=10)`` call after the evaluation.
- ``peak_rss_mb``: the process's peak resident set (``ru_maxrss``; the shared data included),
  ``peak_above_data_mb`` the same less the resident set the process started with.

Per indexer (random, sequential, collaborative): ``fit`` on the training histories, time and peak.

Growth exponent of a step from size n1 to n2: log(t2 / t1) / log(n2 / n1) (1 = linear).

    OMP_NUM_THREADS=1 python bench/scale.py                 # the full table (about an hour on one thread)
    OMP_NUM_THREADS=1 python bench/scale.py --quick         # 10^3 and 10^4 users and items (a minute or two)
    python bench/scale.py --users 10000 100000 --items 10000 --models popularity itemknn --indexers

Writes ``bench/results/scale.json`` (``--output``) and prints one JSON line per run and the table.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from promptrec import __version__
from promptrec.core.recommender import RECOMMENDERS, Recommender, build_recommender
from promptrec.data import Split, leave_one_out, load_dataset
from promptrec.evaluation.ranking import evaluate_rankings, sample_users
from promptrec.indexing import build_indexer
from promptrec.models.p5.config import RunConfig
from promptrec.models.torch_base import TorchRecommender

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("popularity", "itemknn", "bpr", "sasrec", "p5")
INDEXERS = ("random", "sequential", "collaborative")
# Not measured here, and why (the README's Scaling section repeats it).
NOT_MEASURED = {
    "biased_mf": "a rating model (CTR / RMSE); the synthetic log has no ratings",
    "bsarec": "SASRec's loop with a Fourier filter layer; its cost grows as SASRec's (ask with --models bsarec)",
    "cross_encoder": "scores (user, item) text pairs with a pretrained text encoder; the synthetic catalogue has no text",
    "llm": "calls a chat endpoint; its cost is the endpoint's",
    "semantic (indexer)": "embeds item text with a pretrained encoder; the synthetic catalogue has no text",
}
K = 20
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


# -- measuring -------------------------------------------------------------------------------------
def rss_mb() -> float:
    """The resident set size of this process now, in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """The peak resident set of this process so far, in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def growth_exponents(sizes: list[float], values: list[float | None]) -> list[float | None]:
    """log(v2 / v1) / log(n2 / n1) between consecutive sizes (None where a value is missing)."""
    out: list[float | None] = []
    for (n1, v1), (n2, v2) in zip(zip(sizes, values), zip(sizes[1:], values[1:])):
        ok = v1 is not None and v2 is not None and v1 > 0 and v2 > 0 and n2 != n1
        out.append(round(math.log(v2 / v1) / math.log(n2 / n1), 2) if ok else None)
    return out


def in_child(work: Callable[[], dict[str, Any]], timeout: float) -> dict[str, Any]:
    """``work()`` in a forked process (it sees the parent's data, copy-on-write); its result, its
    start and peak resident set, or the error / timeout that ended it."""
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def run() -> None:
        start_rss = rss_mb()
        try:
            result = work()
        except BaseException as error:  # noqa: BLE001  (reported to the parent, whatever it was)
            result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=4)}
        result["start_rss_mb"] = round(start_rss, 1)
        result["peak_rss_mb"] = round(peak_rss_mb(), 1)
        result["peak_above_data_mb"] = round(peak_rss_mb() - start_rss, 1)
        send.send(result)

    process = ctx.Process(target=run)
    process.start()
    if receive.poll(timeout):
        result = receive.recv()
        process.join()
        return result
    process.kill()
    process.join()
    return {"error": f"timeout: stopped after {timeout:.0f} s"}


# -- the runs ---------------------------------------------------------------------------------------
def capped(cls: type[TorchRecommender], steps: int) -> type[TorchRecommender]:
    """``cls`` whose training epochs stop after ``steps`` optimisation steps; the loop's time and
    examples are kept in ``loop_seconds_`` and ``loop_examples_`` (a bounded fit to time)."""

    class Capped(cls):  # type: ignore[misc, valid-type]
        def _minibatch_epoch(self, n_examples, batch_loss, optimiser, order=None):
            if order is None:
                order = torch.randperm(n_examples, generator=self._order_rng)
            order = torch.as_tensor(order)[: steps * self.batch_size]
            start = time.perf_counter()
            loss = super()._minibatch_epoch(len(order), batch_loss, optimiser, order)
            self.loop_seconds_ = getattr(self, "loop_seconds_", 0.0) + time.perf_counter() - start
            self.loop_examples_ = getattr(self, "loop_examples_", 0) + len(order)
            return loss

    Capped.__name__ = Capped.__qualname__ = f"Capped{cls.__name__}"
    return Capped


def make_model(name: str, args: argparse.Namespace) -> Recommender:
    """The model as measured here: defaults, a bounded fit for the iterative ones, CPU, no bars."""
    if name == "p5":
        # The sequence LM recipe, its item tokens from random vectors (the synthetic catalogue has
        # no text), one epoch of --steps batches, validation on 200 users.
        config = RunConfig.load("sequence_lm").update({
            "model.item_init": "random", "train.item_anchor": 0.0, "train.epochs": 1,
            "train.batch_size": args.lm_batch, "train.examples_per_epoch": args.steps * args.lm_batch,
            "train.val_users": 200, "eval.unconstrained_users": 0,
        })  # fmt: skip
        model = build_recommender("p5", config.to_dict())
        model.progress = False
        return model
    cls = RECOMMENDERS.get(name)
    if not issubclass(cls, TorchRecommender):
        return build_recommender(name)
    steps = args.bpr_steps if name == "bpr" else args.steps
    params: dict[str, Any] = {"epochs": 1, "valid_users": 1000, "device": "cpu", "progress": False}
    if name in ("sasrec", "bsarec"):
        params["batch_size"] = args.seq_batch
    return capped(cls, steps).from_params(params)


def measure_model(name: str, split: Split, block: list[str] | None, args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    model = make_model(name, args)
    start = time.perf_counter()
    model.fit(split)
    fit_seconds = time.perf_counter() - start
    out: dict[str, Any] = {"fit_seconds": round(fit_seconds, 3), "peak_rss_after_fit_mb": round(peak_rss_mb(), 1)}
    loop = getattr(model, "loop_seconds_", None)
    examples = getattr(model, "loop_examples_", None)
    if name == "p5":
        loop, examples = model.fit_info_["train_seconds"], model.fit_info_["steps"] * args.lm_batch
    if loop is not None and examples:
        out.update(
            train_loop_seconds=round(loop, 3), train_examples=int(examples),
            train_seconds_per_1k_examples=round(1000 * loop / examples, 4),
        )  # fmt: skip
    start = time.perf_counter()
    summary, _ = evaluate_rankings(model, split, stage="test", k=K, users=block, batch_size=1024)
    wall = time.perf_counter() - start
    targets = len(split.test)
    out.update(
        eval_users=summary["eval_users"],
        eval_seconds=round(summary["eval_seconds"], 3),
        eval_wall_seconds=round(wall, 3),
        eval_seconds_all_users=round(summary["eval_seconds"] * targets / summary["eval_users"], 2),
        eval_extrapolated=summary["eval_users"] < targets,
        **{"HR@10": round(summary["HR@10"], 4)},
    )
    user = split.test["user_id"].iloc[0]
    start = time.perf_counter()
    model.recommend([user], k=10)
    out["recommend_seconds"] = round(time.perf_counter() - start, 4)
    return out


def measure_indexer(name: str, split: Split) -> dict[str, Any]:
    start = time.perf_counter()
    histories = split.train_sequences()
    indexer = build_indexer(name, seed=0)
    indexer.fit(histories, list(split.data.items.index), split.data.items)
    return {"fit_seconds": round(time.perf_counter() - start, 3), "tokens": len(indexer.tokens())}


def run_cell(users: int, items: int, args: argparse.Namespace) -> dict[str, Any]:
    """Generate one log and measure every model and indexer on it, each in its own process."""
    gc.collect()
    start = time.perf_counter()
    data = load_dataset("synthetic", users=users, items=items, seed=args.seed)
    generated = time.perf_counter() - start
    split = leave_one_out(data)
    cell: dict[str, Any] = {
        "users": users,
        "items": items,
        "interactions": len(data.interactions),
        "train_interactions": len(split.train),
        "test_users": len(split.test),
        "generate_seconds": round(generated, 2),
        "split_seconds": round(time.perf_counter() - start - generated, 2),
        "data_rss_mb": round(rss_mb(), 1),
        "models": {},
        "indexers": {},
    }
    block = sample_users(split, "test", args.eval_users, seed=args.seed)
    lm_block = sample_users(split, "test", args.lm_eval_users, seed=args.seed)
    for name in args.models:
        chosen = lm_block if name == "p5" else block
        result = in_child(partial(measure_model, name, split, chosen, args), args.timeout)
        cell["models"][name] = result
        print(json.dumps({"users": users, "items": items, "model": name, **result}), flush=True)
    for name in args.indexers:
        result = in_child(partial(measure_indexer, name, split), args.timeout)
        cell["indexers"][name] = result
        print(json.dumps({"users": users, "items": items, "indexer": name, **result}), flush=True)
    del data, split
    return cell


# -- the table -----------------------------------------------------------------------------------------
METRICS = ("fit_seconds", "train_seconds_per_1k_examples", "eval_seconds_all_users", "recommend_seconds", "peak_above_data_mb")


def sweeps(cells: dict[tuple[int, int], dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Per sweep, model (or indexer) and metric: the values along the sweep and their exponents."""
    out: dict[str, Any] = {}
    for sweep, key in (
        ("users", lambda n: (n, args.base_items)),
        ("items", lambda n: (args.base_users, n)),
    ):
        present = sorted(n for n in {*args.users, *args.items, *(u for u, _ in cells), *(i for _, i in cells)} if key(n) in cells)
        table: dict[str, Any] = {}
        for kind in ("models", "indexers"):
            for name in sorted({n for cell in cells.values() for n in cell[kind]}, key=_run_order):
                runs = [cells[key(n)][kind].get(name, {}) for n in present]
                row = {}
                for metric in METRICS:
                    values = [r.get(metric) for r in runs]
                    if any(v is not None for v in values):
                        row[metric] = {"values": values, "exponents": growth_exponents(present, values)}
                table[name] = row
        out[sweep] = {"sizes": present, "fixed": {"users": args.base_users} if sweep == "items" else {"items": args.base_items}, "runs": table}
    return out


def _run_order(name: str) -> tuple[int, str]:
    order = (*MODELS, *INDEXERS)
    return (order.index(name) if name in order else len(order), name)


def print_table(growth: dict[str, Any]) -> None:
    for sweep, body in growth.items():
        print(f"\n{sweep} sweep: sizes {body['sizes']} ({body['fixed']})")
        print(f"{'run':<14} {'metric':<32} values  |  exponents per step")
        for name, row in body["runs"].items():
            for metric, entry in row.items():
                values = ", ".join("-" if v is None else f"{v:g}" for v in entry["values"])
                exps = ", ".join("-" if e is None else f"{e:.2f}" for e in entry["exponents"])
                print(f"{name:<14} {metric:<32} {values}  |  {exps}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, nargs="*", default=[10**4, 10**5, 10**6], help="users sweep")
    ap.add_argument("--items", type=int, nargs="*", default=[10**4, 10**5, 10**6], help="items sweep")
    ap.add_argument("--base-users", type=int, default=10**5, help="users of the items sweep")
    ap.add_argument("--base-items", type=int, default=10**5, help="items of the users sweep")
    ap.add_argument("--quick", action="store_true", help="10^3 and 10^4 users and items, few steps")
    ap.add_argument("--models", nargs="*", default=list(MODELS), help="registered recommenders")
    ap.add_argument("--indexers", nargs="*", default=list(INDEXERS), help="registered item indexers")
    ap.add_argument("--steps", type=int, default=4, help="training steps of SASRec and the prompt LM")
    ap.add_argument("--bpr-steps", type=int, default=20, help="training steps of BPR")
    ap.add_argument("--seq-batch", type=int, default=64, help="SASRec batch (user sequences)")
    ap.add_argument("--lm-batch", type=int, default=8, help="prompt LM batch (prompts)")
    ap.add_argument("--eval-users", type=int, default=4000, help="user block evaluated (0 = all)")
    ap.add_argument("--lm-eval-users", type=int, default=1000, help="user block evaluated for the prompt LM")
    ap.add_argument("--timeout", type=float, default=480, help="seconds before one run is stopped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--merge", action="store_true",
        help="keep the runs already in --output: this command's runs replace theirs cell by cell (a rerun of some)",
    )  # fmt: skip
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "scale.json"))
    args = ap.parse_args()
    if args.quick:
        args.users, args.items, args.base_users, args.base_items = [1000, 10000], [1000, 10000], 1000, 1000
        args.steps, args.bpr_steps, args.eval_users, args.lm_eval_users = 2, 4, 1000, 200
    torch.set_num_threads(1)
    for name in args.models:  # a misspelled name fails before any data is made
        RECOMMENDERS.get(name) if name != "p5" else None
    env = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ENV_KEYS if k in os.environ)
    command = (env + " " if env else "") + "python " + " ".join(shlex.quote(a) for a in sys.argv)

    # Smallest cells first; the file is rewritten after every cell, so a stopped run keeps its table.
    grid = sorted(
        {(n, args.base_items) for n in args.users} | {(args.base_users, n) for n in args.items},
        key=lambda cell: (cell[0] * cell[1], cell),
    )
    cells: dict[tuple[int, int], dict[str, Any]] = {}
    commands = [command]
    if args.merge and Path(args.output).exists():
        earlier = json.loads(Path(args.output).read_text())
        cells = {(c["users"], c["items"]): c for c in earlier["cells"]}
        commands = [*earlier.get("commands", [earlier.get("command")]), command]
    started = time.perf_counter()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    for n, (users, items) in enumerate(grid):
        cell = run_cell(users, items, args)
        cell["load_average"] = os.getloadavg()
        if (users, items) in cells:  # --merge: the runs measured now replace the earlier ones
            previous = cells[(users, items)]
            cell["models"] = {**previous["models"], **cell["models"]}
            cell["indexers"] = {**previous["indexers"], **cell["indexers"]}
        cells[(users, items)] = cell
        growth = sweeps(cells, args)
        result = {
            "commands": commands,
            "complete": n == len(grid) - 1,
            "cells": [cells[key] for key in sorted(cells, key=lambda c: (c[0] * c[1], c))],
            "growth": growth,
            "settings": {k: v for k, v in vars(args).items() if k != "output"},
            "not_measured": NOT_MEASURED,
            "total_seconds": round(time.perf_counter() - started, 1),
            "torch_threads": torch.get_num_threads(),
            "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
            "promptrec_version": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        }
        Path(args.output).write_text(json.dumps(result, indent=2, default=str))
    print_table(growth)
    print(json.dumps({"output": args.output, "commands": commands, "total_seconds": result["total_seconds"]}))


if __name__ == "__main__":
    main()
