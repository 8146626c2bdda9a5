"""Quality experiments on Amazon Beauty and Sports: one recipe (a config file plus overrides), one
dataset, one seed per run; all items ranked for all users, history excluded.

    python bench/quality.py --config sequence_lm --set model.preset=mini --set model.max_history=20 --set model.templates=p5 --set model.prompt_eos=true --set model.item_init=random --set train.item_anchor=0 --set train.length_window=64 --set train.lr=0.003 --set train.epochs=45 --set train.patience=5 --dataset beauty --seed 0
    python bench/quality.py --config sequence_lm --set model.preset=mini --set model.max_history=20 --set model.templates=p5 --set model.prompt_eos=true --set model.item_init=random --set train.item_anchor=0 --set train.length_window=64 --set train.lr=0.003 --set train.epochs=45 --set train.patience=5 --dataset beauty --seed 0 --set model.dropout=0.5 --name dropout05
    python bench/quality.py --table     # the results table of every recorded experiment
    python bench/quality.py --validate runs/quality/beauty_sequence_lm_s0   # all-user validation
    python bench/quality.py --paired runs/quality/beauty_cosine25_s0 runs/quality/beauty_cosine25_s1 \
        --against runs/baselines/beauty_sasrec    # seed-averaged per-user test against a baseline
    python bench/quality.py --by-length runs/quality/sports_anchor_s0 runs/baselines/sports_sasrec \
        --dataset sports    # per-user test NDCG@10 by the length of the history the test prompt shows

Each run's model is also scored on **all** validation users (``valid_all_*``): the early-stopping
subset (``train.val_users``) is small and was used to pick the epoch, so it flatters the model;
recipes are compared on the all-user number, the test split stays untouched.

Each run writes runs/quality/<dataset>_<name>_s<seed>/ (model, per-user results, metrics) and
appends one line to bench/results/quality.jsonl: the config, the validation and test numbers, the
training and evaluation time and the command. SASRec-CE rows come from bench/baselines.py.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path


from promptrec.data import leave_one_out
from promptrec.evaluation.report import by_history_length
from promptrec.evaluation.report import seed_paired as report_seed_paired
from promptrec.core.config import parse_overrides
from promptrec.core.config import DataConfig
from promptrec.models.p5.config import RunConfig
from promptrec.models.p5.model import P5Recommender
from promptrec.pipeline import load_data, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "bench" / "results" / "quality.jsonl"
DATA = {"beauty": ROOT.parent / "shared" / "data" / "beauty", "sports": ROOT.parent / "shared" / "data" / "sports"}
KEYS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20", "invalid_rate", "unconstrained_invalid_rate",
        "coverage@10", "eval_users", "eval_seconds", "users_per_second")


def run(args: argparse.Namespace) -> None:
    overrides = parse_overrides(args.set)
    data_path = args.data or str(DATA[args.dataset])
    if not Path(data_path).is_dir():
        sys.exit(f"{args.dataset} data not found at {data_path} (pass --data DIR)")
    cfg = RunConfig.load(args.config).update({"data.path": data_path, "train.seed": args.seed, **overrides})
    name = args.name or Path(args.config).stem
    run_dir = Path(args.runs) / f"{args.dataset}_{name}_s{args.seed}"
    # The command reproduces the run from scratch; a resumed run is marked in its row instead.
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv if a != "--resume")
    t0 = time.perf_counter()
    metrics = train_and_evaluate(
        cfg, run_dir, resume=args.resume, command=command, progress=sys.stderr.isatty() or args.progress
    )
    model = metrics["model"]
    valid = full_validation(run_dir)
    fit = model  # the model's entry carries its fit_info (epochs, times, device, parameters)
    row = {
        "dataset": args.dataset, "recipe": name, "seed": args.seed,
        **{k: model.get(k) for k in KEYS},
        "best_valid_NDCG@10": fit.get("best_valid_NDCG@10"), "epochs_run": fit.get("epochs_run"),
        **valid, "best_epoch": fit.get("best_epoch"), "train_seconds": fit.get("train_seconds"),
        "stopped_by_time_limit": fit.get("stopped_by_time_limit"), "device": fit.get("device"),
        "total_parameters": fit.get("total_parameters"), "popularity_HR@10": metrics["popularity"]["HR@10"],
        "wall_seconds": round(time.perf_counter() - t0, 1), "resumed": args.resume, "run_dir": _relative(run_dir),
        "config": cfg.to_dict(), "command": command,
    }
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    with TABLE.open("a") as f:
        f.write(json.dumps(row, default=str) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "config"}, default=str))


def _relative(path: Path) -> str:
    """Run directories are recorded relative to the repository when they lie inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def full_validation(run_dir: Path) -> dict[str, float]:
    """HR@10 / NDCG@10 of the run's saved model on every validation user."""
    rec = P5Recommender.from_pretrained(Path(run_dir) / "model")
    split = leave_one_out(load_data(rec.config.data))
    t0 = time.perf_counter()
    m = rec.evaluate_users(split, list(split.valid["user_id"]), stage="valid")
    return {"valid_all_HR@10": m["HR@10"], "valid_all_NDCG@10": m["NDCG@10"],
            "valid_all_seconds": round(time.perf_counter() - t0, 1)}


def validate(run_dir: str) -> None:
    """Add the all-user validation numbers to the recorded rows of ``run_dir`` (runs made before
    they were recorded) and print them."""
    valid = full_validation(Path(run_dir))
    rows = [json.loads(line) for line in TABLE.read_text().splitlines() if line.strip()]
    hits = [r for r in rows if (ROOT / r["run_dir"]).resolve() == Path(run_dir).resolve()]
    if not hits:
        sys.exit(f"no recorded row has run_dir {run_dir}")
    for r in hits:
        r.update(valid)
    TABLE.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    print(json.dumps({"run_dir": run_dir, **valid}))


def seed_paired(runs: list[str], against: str) -> None:
    print(json.dumps(report_seed_paired(runs, against), indent=1, default=float))  # numpy scalars


def by_length(runs: list[str], data_path: str) -> None:
    split = leave_one_out(load_data(DataConfig(loader="p5", path=data_path)))
    print(json.dumps(by_history_length(runs, split.history("test")), indent=1))


def table() -> None:
    if not TABLE.exists():
        sys.exit(f"no experiments recorded yet ({TABLE})")
    rows = [json.loads(line) for line in TABLE.read_text().splitlines() if line.strip()]
    cols = ["dataset", "recipe", "seed", "best_valid_NDCG@10", "valid_all_NDCG@10", "HR@10", "NDCG@10", "HR@20", "epochs_run",
            "train_seconds", "eval_seconds", "device"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r.get(c):.4f}" if isinstance(r.get(c), float) and c not in ("train_seconds", "eval_seconds")
                 else str(r.get(c)) for c in cols]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="sequence_lm", help="run config: a file or a shipped recipe")
    ap.add_argument("--dataset", choices=sorted(DATA), default="beauty")
    ap.add_argument("--data", default=None, help="dataset directory (default: ../shared/data/<dataset>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None, help="recipe name in the table (default: the config's file name)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "quality"))
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    ap.add_argument("--progress", action="store_true", help="progress bars even when output is redirected")
    ap.add_argument("--table", action="store_true", help="print the results table and exit")
    ap.add_argument("--validate", metavar="RUN_DIR", help="score a recorded run on all validation users and exit")
    ap.add_argument("--paired", nargs="+", metavar="RUN_DIR", help="runs (seeds) to average per user and test, then exit")
    ap.add_argument("--against", metavar="RUN_DIR", help="the run --paired is tested against")
    ap.add_argument("--by-length", nargs="+", metavar="RUN_DIR",
                    help="per-user test NDCG@10 of these runs by test-history length (data: --dataset/--data), then exit")
    args = ap.parse_args()
    if args.paired:
        if not args.against:
            ap.error("--paired needs --against RUN_DIR")
        seed_paired(args.paired, args.against)
    elif args.by_length:
        by_length(args.by_length, args.data or str(DATA[args.dataset]))
    elif args.table:
        table()
    elif args.validate:
        validate(args.validate)
    else:
        run(args)


if __name__ == "__main__":
    main()
