"""Feedback-loop simulation on MovieLens-100K: 50 rounds, 3 seeds, popularity, item-kNN, SASRec and
the promptrec LM recommender (GPT-2 tiny, one token per item, whole-sequence training), each with
no updates and with periodic updates (classic models: retraining every 10 rounds; the LM: warm-start
fine-tuning on the new events every 10 rounds, 20 % replay), plus a feedback-loop check after
Mansoury et al. (CIKM 2020): item-kNN and BPR retrained every 5 rounds with nobody leaving.

    python bench/simulate.py                       # every group
    python bench/simulate.py --group classic --workers 2
    python bench/simulate.py --group lm --resume   # continue interrupted runs

Each group is ``promptrec simulate`` on configs/simulate_ml100k.yaml with the overrides below; the
run directories go to runs/simulation/<group>/ (config, rounds.jsonl, plots, summary.md, runs/).
Writes bench/results/simulation/<group>.jsonl (per round, mean over seeds, the main metrics) and
its plots, and prints the summary rows as JSON with the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from promptrec.simulation import SimulationConfig, simulate
from promptrec.simulation.report import plot_metrics, summary_table

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "simulate_ml100k.yaml"

SASREC = {"name": "sasrec", "params": {"epochs": 8, "patience": 3, "valid_users": 300, "max_len": 50}}
LM = {
    "name": "p5",
    "label": "lm",
    "params": {
        "index.method": "random", "index.params": {"levels": 1}, "model.backbone": "gpt2",
        "model.preset": "tiny", "model.max_history": 20, "tasks.weights": {"sequence": 1.0},
        "train.history_loss": True, "train.epochs": 8, "train.batch_size": 64, "train.lr": 0.003,
        "train.val_users": 200, "train.patience": 3, "eval.batch_size": 256,
    },
}  # fmt: skip
GROUPS = {
    "classic": {
        "recommenders": [{"name": "popularity"}, {"name": "itemknn"}, SASREC, {"name": "oracle"}, {"name": "random"}],
        "updates": [{"strategy": "none"}, {"strategy": "retrain", "every": 10}],
    },
    "lm": {
        "recommenders": [LM],
        "updates": [{"strategy": "none"}, {"strategy": "finetune", "every": 10, "epochs": 1, "replay": 0.2}],
    },
    # Mansoury et al.: the loop alone, no departures (a user who left could not be compared).
    "mansoury": {
        "recommenders": [{"name": "itemknn"}, {"name": "bpr", "params": {"epochs": 20, "valid_users": 300, "patience": 3}}],
        "updates": [{"strategy": "retrain", "every": 5}],
        "choice.leave_threshold": 0.0,
    },
}
KEEP = (
    "ctr", "conversion", "satisfaction", "retention", "coverage", "gini", "popularity", "ild", "HR@10", "NDCG@10",
    "round_seconds", "recommend_seconds", "eval_seconds", "update_seconds",
)  # fmt: skip
GROUP_KEEP = ("popularity", "coverage", "satisfaction", "ctr")
PLOTS = ("ctr", "conversion", "satisfaction", "retention", "coverage", "gini", "popularity", "ild", "HR@10",
         "gap[gender]_popularity")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", nargs="+", choices=sorted(GROUPS), default=["classic", "mansoury", "lm"])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--recommenders", nargs="+", help="only these recommender labels of each group")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="re-read finished runs instead of simulating")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "simulation"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "simulation"))
    args = ap.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for group in args.group:
        spec = dict(GROUPS[group])
        if args.recommenders:
            spec["recommenders"] = [r for r in spec["recommenders"] if r.get("label", r["name"]) in args.recommenders]
        cfg = SimulationConfig.load(CONFIG).update({**spec, "rounds": args.rounds, "seeds": args.seeds})
        out = Path(args.runs) / group
        if args.report_only:
            table = finished_runs(out)
            report(group, table, results, command, out, 0.0)
            continue
        if out.exists() and not args.resume:
            shutil.rmtree(out)
        fitted = [Path(args.runs) / g / "oracle" for g in GROUPS if (Path(args.runs) / g / "oracle" / "oracle.json").exists()]
        if fitted and not (out / "oracle").exists():
            # Every group uses the same data and oracle config: fit the ground truth once.
            shutil.copytree(fitted[0], out / "oracle")
        start = time.perf_counter()
        table = simulate(cfg, out, resume=args.resume, workers=args.workers, progress=sys.stderr.isatty())
        wall = time.perf_counter() - start
        report(group, table, results, command, out, wall)


def finished_runs(out: Path) -> pd.DataFrame:
    """The rounds of every run directory under ``out/runs`` (finished or not), named as jobs are."""
    frames = []
    for path in sorted((out / "runs").glob("*/rounds.jsonl")):
        rec, update, intervention, seed = path.parent.name.split("__")
        frame = pd.read_json(path, lines=True)
        if len(frame):
            frames.append(frame.assign(recommender=rec, update=update, intervention=intervention, seed=int(seed[4:])))
    return pd.concat(frames, ignore_index=True)


def report(group: str, table: pd.DataFrame, results: Path, command: str, out: Path, wall: float) -> None:
    group_cols = [c for c in table if c.startswith("group[") and c.rsplit("_", 1)[-1] in GROUP_KEEP]
    cols = [c for c in (*KEEP, *group_cols) if c in table]
    keys = ["recommender", "update", "intervention", "round"]
    mean = table.groupby(keys)[cols].mean().reset_index()
    with (results / f"{group}.jsonl").open("w") as f:
        for record in mean.to_dict(orient="records"):
            f.write(json.dumps({**record, "command": command}, default=float) + "\n")
    for png in plot_metrics(table, results / group, PLOTS):
        print(f"plot: {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}", file=sys.stderr)
    summary = summary_table(table)
    summary.to_json(results / f"{group}_summary.json", orient="records", indent=1)
    oracle = json.loads((out / "oracle" / "oracle.json").read_text())["info"]
    print(json.dumps({"group": group, "wall_seconds": round(wall, 1), "oracle": oracle, "command": command}))
    for row in summary.to_dict(orient="records"):
        print(json.dumps(row, default=float))

    if group == "mansoury":
        print(json.dumps({"mansoury": mansoury(table)}))


def mansoury(table: pd.DataFrame) -> list[dict]:
    """Directions over the loop, per recommender: popularity of recommended items and aggregate
    diversity (distinct items recommended / catalogue), overall and per gender, first vs last round;
    the relative change and in how many seeds it has the sign of the mean."""
    rows = []
    last = table["round"].max()
    for rec, runs in table.groupby("recommender"):
        row = {"recommender": rec}
        for name, col in [("popularity", "popularity"), ("coverage", "coverage"),
                          ("popularity_M", "group[gender=M]_popularity"), ("popularity_F", "group[gender=F]_popularity"),
                          ("coverage_M", "group[gender=M]_coverage"), ("coverage_F", "group[gender=F]_coverage")]:
            first = runs[runs["round"] == 1].set_index("seed")[col]
            end = runs[runs["round"] == last].set_index("seed")[col]
            change = (end - first) / first
            row[name] = {
                "first": round(float(first.mean()), 4), "last": round(float(end.mean()), 4),
                "change_pct": round(100 * float(change.mean()), 1),
                "seeds_same_sign": int((change * change.mean() > 0).sum()), "seeds": int(len(change)),
            }  # fmt: skip
        rows.append(row)
    return rows


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
