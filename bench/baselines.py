"""Non-LM baselines (popularity, item-kNN, BPR-MF, SASRec; BSARec when asked for) on Amazon Beauty,
Amazon Sports and MovieLens-100K (Sports only when asked for: its SASRec run takes hours on a CPU).

Leave-one-out per user (last item = test, the one before = validation, the rest = training),
**all** catalogue items ranked, the user's history excluded, through the same harness as the LM
recommenders (:func:`promptrec.evaluation.ranking.evaluate_rankings`, beyond-accuracy metrics included).
For each (dataset, model) it writes

- ``<results>/baselines_<dataset>_<model>.json``: accuracy (HR/NDCG@5/10/20, MRR), the
  beyond-accuracy metrics, train/eval seconds, evaluated users, the process's peak RSS, the model
  parameters, the dataset summary, torch threads and the command; its ``"model"`` and
  ``"popularity"`` entries make it readable by ``promptrec compare`` as well;
- ``<runs>/<dataset>_<model>/``: a run directory (:func:`promptrec.pipeline.write_run`, entries
  ``model`` and ``popularity`` on the same users) for ``promptrec compare``, with the fitted model
  saved by ``save_pretrained`` in ``model/``.

Model defaults are the classes' own; SASRec's are the reference recipe of the shared data README
(d 64, 2 blocks, 1 head, dropout 0.6, Adam 5e-4, batch 512, length 50, full-softmax CE, up to 200
epochs, best epoch by validation NDCG@10), BSARec's the RecBoard run (d 64, 2 blocks, 1 head,
dropout 0.5, alpha 0.7, c 5, Adam 1e-4, weight decay 1e-4, batch 256, every prefix a CE example;
about six times SASRec's encoder work per epoch: a GPU job at full size). Any registered
recommender is accepted by ``--models``. Override any constructor parameter per model:

    OMP_NUM_THREADS=1 python bench/baselines.py                        # all four, both datasets
    python bench/baselines.py --datasets ml-100k --models popularity itemknn
    python bench/baselines.py --datasets beauty --models sasrec --param sasrec.epochs=5   # quick
    python bench/baselines.py --datasets sports --models sasrec --param sasrec.time_limit=7800   # capped
    python bench/baselines.py --models bpr sasrec --param bpr.device=cuda --param sasrec.device=cuda
    python bench/baselines.py --datasets beauty --models bsarec --param bsarec.device=cuda
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from promptrec.core.config import parse_overrides
from promptrec import __version__
from promptrec.models.classic.popularity import MostPopular
from promptrec.core.config import DataConfig
from promptrec.data import Split, leave_one_out
from promptrec.evaluation.ranking import evaluate_rankings, format_table
from promptrec.pipeline import SUMMARY_KEYS, load_data, write_run
from promptrec.core.recommender import RECOMMENDERS, Recommender, build_recommender

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("beauty", "sports", "ml-100k")
DEFAULT_DATASETS = ("beauty", "ml-100k")
MODELS = ("popularity", "itemknn", "bpr", "sasrec")
K = 20  # list length asked of every model: the largest metric cutoff
PROTOCOL = (
    "leave-one-out per user (last interaction = test, the one before = validation, the rest = "
    "training; test-stage history = training + validation item), all catalogue items ranked, "
    "history excluded, top-20 lists"
)
RSS_NOTE = (
    "ru_maxrss of this process (peak resident set size since it started, never decreases): "
    "'after' includes data loading and every model run earlier in the same process"
)
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
TABLE_KEYS = (*SUMMARY_KEYS, "coverage@10", "train_seconds", "eval_seconds")


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MiB (Linux reports ru_maxrss in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def parse_params(items: list[str], models: list[str]) -> dict[str, dict[str, Any]]:
    """``["sasrec.epochs=5", ...]`` -> ``{"sasrec": {"epochs": 5}}`` (values parsed as YAML)."""
    params: dict[str, dict[str, Any]] = {m: {} for m in models}
    for key, value in parse_overrides(items).items():
        model, dot, name = key.partition(".")
        if not (dot and model and name):
            raise SystemExit(f"--param {key!r}: expected MODEL.PARAM=VALUE, e.g. sasrec.epochs=5")
        if model not in models:
            raise SystemExit(f"--param {key!r}: model {model!r} is not among --models {models}")
        params[model][name] = value
    return params


def make_model(name: str, params: dict[str, Any], progress: bool) -> Recommender:
    """A fresh model; ``progress`` goes to models that take it unless set explicitly."""
    cls = RECOMMENDERS.get(name)
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        known = [p for p in accepted if p != "self"]
        raise SystemExit(f"{name}: unknown parameter(s) {unknown}; it takes {known}")
    if "progress" in accepted and "progress" not in params:
        params = {**params, "progress": progress}
    return build_recommender(name, **params)


def amazon_path(dataset: str, args: argparse.Namespace) -> str:
    return args.beauty_path if dataset == "beauty" else args.sports_path


def load(dataset: str, args: argparse.Namespace) -> Split:
    if dataset == "ml-100k":
        cfg = DataConfig(loader="ml-100k", path=args.ml100k_path)
    else:  # the two Amazon sets, in P5's files
        cfg = DataConfig(loader="p5", path=str(Path(amazon_path(dataset, args)).resolve()))
    return leave_one_out(load_data(cfg))


def run_one(
    dataset: str, name: str, split: Split, params: dict[str, Any], args: argparse.Namespace, command: str
) -> dict[str, Any]:
    """Fit, evaluate, save the model and write the run directory and the results JSON."""
    start = time.perf_counter()
    rss_before = peak_rss_mb()
    model = make_model(name, params, progress=not args.no_progress)
    run_dir = Path(args.runs) / f"{dataset}_{name}"
    t0 = time.perf_counter()
    # The torch models write a checkpoint to run_dir/checkpoint after every epoch; --resume
    # continues a cut run from it (train_seconds then counts this process's part; the fit info's
    # train_seconds_total counts every epoch's).
    model.fit_with_checkpoints(split, run_dir, resume=args.resume)
    train_seconds = time.perf_counter() - t0
    summary, per_user = evaluate_rankings(
        model, split, stage="test", k=K, beyond=True, progress=not args.no_progress
    )
    summary["train_seconds"] = train_seconds
    rss_after = peak_rss_mb()

    # The popularity entry on the same users, through the same code (the model itself when it
    # is popularity).
    if name == "popularity":
        pop_summary, pop_users = summary, per_user
    else:
        t0 = time.perf_counter()
        pop = MostPopular().fit(split)
        pop_train = time.perf_counter() - t0
        pop_summary, pop_users = evaluate_rankings(
            pop, split, stage="test", k=K, users=list(per_user["user_id"]), beyond=True
        )
        pop_summary["train_seconds"] = pop_train

    model.save_pretrained(run_dir / "model")
    fit_info = getattr(model, "fit_info_", None)
    info = {
        "recommender": name,
        "dataset": dataset,
        "data": split.data.summary(),
        "params": model.get_params(),
        "config": {"recommender": name, "params": model.get_params(), "protocol": PROTOCOL},
        "fit_info": fit_info,
        "command": command,
    }
    metrics = write_run(
        run_dir,
        split,
        {"model": (summary, per_user), "popularity": (pop_summary, pop_users)},
        **info,
        total_seconds=round(time.perf_counter() - start, 2),
    )
    result = {
        **info,
        "model": metrics["model"],
        "popularity": metrics["popularity"],
        "protocol": PROTOCOL,
        "train_seconds": round(train_seconds, 3),
        "eval_seconds": round(summary["eval_seconds"], 3),
        "eval_users": summary["eval_users"],
        "memory": {"peak_rss_mb_before": rss_before, "peak_rss_mb_after": rss_after, "note": RSS_NOTE},
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_available": torch.cuda.is_available(),
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
        "run_dir": str(run_dir),
        "model_dir": str(run_dir / "model"),
        "total_seconds": round(time.perf_counter() - start, 2),
        "promptrec_version": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    out = Path(args.results) / f"baselines_{dataset}_{name}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    result["results_file"] = str(out)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DEFAULT_DATASETS))
    ap.add_argument("--models", nargs="+", default=list(MODELS), help=f"registered recommenders (default: {' '.join(MODELS)})")
    ap.add_argument(
        "--param", "--set", dest="param", action="append", default=[], metavar="MODEL.PARAM=VALUE",
        help="constructor override for one model, value parsed as YAML (repeatable), e.g. sasrec.epochs=5",
    )
    ap.add_argument("--beauty-path", default=str(ROOT.parent / "shared" / "data" / "beauty"), help="P5 Beauty directory")
    ap.add_argument("--sports-path", default=str(ROOT.parent / "shared" / "data" / "sports"), help="P5 Sports directory")
    ap.add_argument("--ml100k-path", default=None, help="ml-100k directory (default: the cached copy, fetched if missing)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"), help="where the results JSON files go")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "baselines"), help="where run directories go")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's, i.e. OMP_NUM_THREADS)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--resume", action="store_true", help="continue each torch model's fit from RUNS/<dataset>_<model>/checkpoint")
    args = ap.parse_args()
    # per-epoch training lines (loss, validation score, seconds) from the models' logger
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    for name in args.models:  # promptrec.models, imported above, registered every baseline
        if name not in RECOMMENDERS:
            ap.error(f"unknown model {name!r}; registered: {', '.join(RECOMMENDERS.names())}")
    for dataset in set(args.datasets) - {"ml-100k"}:  # a wrong path fails now, not after an earlier dataset's hours
        if not Path(amazon_path(dataset, args)).is_dir():
            ap.error(f"{dataset} data not found at {amazon_path(dataset, args)} (pass --{dataset}-path DIR)")
    params = parse_params(args.param, args.models)
    for name in args.models:  # fail on a bad parameter before any data is loaded
        make_model(name, params[name], progress=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ENV_KEYS if k in os.environ)
    command = (env + " " if env else "") + "python " + " ".join(shlex.quote(a) for a in sys.argv)
    Path(args.results).mkdir(parents=True, exist_ok=True)

    table: dict[str, dict[str, Any]] = {}
    for dataset in args.datasets:
        split = load(dataset, args)
        s = split.data.summary()
        print(f"data: {dataset}: {s['users']} users, {s['items']} items, {s['interactions']} interactions", flush=True)
        for name in args.models:
            result = run_one(dataset, name, split, params[name], args, command)
            m = result["model"]
            line = {
                "dataset": dataset,
                "model": name,
                **{k: round(m[k], 4) for k in SUMMARY_KEYS},
                "coverage@10": round(m["coverage@10"], 4),
                "popularity_NDCG@10": round(result["popularity"]["NDCG@10"], 4),
                "train_seconds": result["train_seconds"],
                "eval_seconds": result["eval_seconds"],
                "eval_users": result["eval_users"],
                "peak_rss_mb": result["memory"]["peak_rss_mb_after"],
                "results": result["results_file"],
                "run_dir": result["run_dir"],
            }
            print(json.dumps(line), flush=True)
            table[f"{dataset}/{name}"] = m
    print(format_table(table, TABLE_KEYS))


if __name__ == "__main__":
    main()
