"""The shipped ``sequence_lm`` recipe, unchanged, on data it was not chosen on, beside SASRec-CE and BSARec-CE.

The recipe was chosen on Amazon Beauty and Sports; its length is chosen on validation
(``train.schedule: plateau``), so it needs no budget of its own elsewhere. Each (dataset, model,
seed) is one ``promptrec train`` run directory (trained here unless it exists already); the table
has each run's test HR@10 / NDCG@10, the epoch validation stopped it at and its training time,
and the seed-averaged paired test of the LM against each baseline on the same users.

    OMP_NUM_THREADS=1 python bench/recipe_travel.py --runs runs/travel                  # train what is missing, then report
    python bench/recipe_travel.py --runs runs/travel --datasets ml-100k --seeds 0 1 --no-train
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from promptrec.evaluation.report import seed_paired

ROOT = Path(__file__).resolve().parents[1]
DATA = {
    "ml-100k": ("ml-100k", "ml-100k"),
    "ml-latest-small": ("movielens", "ml-latest-small"),
}
# SASRec-CE's reference recipe (its defaults), 200 epochs validated every 5: on MovieLens
# its validation stalls for tens of epochs before it climbs again.
SASREC = ["--model", "sasrec", "--set", "eval_every=5", "--set", "patience=40"]
MODELS = {
    "lm": ["--config", "sequence_lm"],
    "sas": SASREC,
    # The same, left to choose its own length (200 epochs without a validation gain end it): on
    # MovieLens-100K validation still rises at epoch 200 and peaks near 450-500.
    "sas1000": [*SASREC, "--set", "epochs=1000"],
    # BSARec-CE at the rate of its Beauty and Sports runs here (RecBoard's Sports rate), validated
    # every epoch: an epoch is every prefix of every history, about 20x SASRec's.
    "bsa": ["--model", "bsarec", "--set", "lr=0.0005", "--set", "patience=5"],
}


def run_name(dataset: str, model: str, seed: int) -> str:
    return f"{'ml' if dataset == 'ml-100k' else 'ls'}_{model}_s{seed}"


def train_command(dataset: str, model: str, seed: int, data_root: Path, out: Path) -> list[str]:
    loader, folder = DATA[dataset]
    seed_key = "train.seed" if model == "lm" else "seed"
    return ["promptrec", "train", *MODELS[model], "--loader", loader, "--data", str(data_root / folder),
            "--set", f"{seed_key}={seed}", "-o", str(out)]


def summary(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())["model"]
    fit = json.loads((run / "model" / "promptrec_config.json").read_text())["fit_info"]
    return {
        "run": str(run),
        "HR@10": metrics["HR@10"], "NDCG@10": metrics["NDCG@10"], "users": metrics["eval_users"],
        "epochs_run": fit.get("epochs_run"), "best_epoch": fit.get("best_epoch"),
        "train_seconds": fit.get("train_seconds", fit.get("fit_seconds")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "travel"), help="where the run directories are (or go)")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"), help="folder holding ml-100k/ and ml-latest-small/")
    ap.add_argument("--datasets", nargs="+", default=list(DATA), choices=list(DATA))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="lm is always reported")
    ap.add_argument("--no-train", action="store_true", help="report the runs that exist; train nothing")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "recipe_travel.json"))
    args = ap.parse_args()

    runs = Path(args.runs)
    out: dict = {"command": shlex.join([sys.executable, *sys.argv]), "rows": [], "paired": {}}
    for dataset in args.datasets:
        done: dict[str, list[Path]] = {model: [] for model in MODELS}
        for model in dict.fromkeys(["lm", *args.models]):
            for seed in args.seeds:
                run = runs / run_name(dataset, model, seed)
                cmd = train_command(dataset, model, seed, Path(args.data_root), run)
                if not (run / "metrics.json").exists():
                    if args.no_train:
                        continue
                    print("+", shlex.join(cmd), flush=True)
                    subprocess.run(cmd, check=True)
                done[model].append(run)
                out["rows"].append({"dataset": dataset, "model": model, "seed": seed, "train_command": shlex.join(cmd), **summary(run)})
        if done["lm"]:
            out["paired"][dataset] = {
                baseline: seed_paired(done["lm"], done[baseline]) for baseline in MODELS if baseline != "lm" and done[baseline]
            }
    text = json.dumps(out, indent=1, default=float)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
