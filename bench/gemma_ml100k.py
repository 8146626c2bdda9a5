"""The pretrained LLM as a prompt-model backbone: Gemma 3 270M (LoRA or full tuning) against the
same architecture and tokenizer with random weights, at the same number of steps, on
MovieLens-100K (all 1,682 items ranked for all 943 users, history excluded).

    promptrec models get gemma-3-270m
    OMP_NUM_THREADS=1 python bench/gemma_ml100k.py --variants lora random --seeds 0 1 --steps 80

Every run is recipes/gemma_sequence.yaml with the variant's overrides and a fixed step budget
(one epoch of ``steps`` x batch examples), so the variants differ in the weights they start from
and what trains, nothing else. Writes bench/results/gemma_ml100k_<variant>_s<seed>.json (metrics,
training time, parameters, command); the run directories (runs/gemma/<variant>-s<seed>) are what
`promptrec compare --paired` reads for the per-user paired test.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from promptrec.core.config import parse_overrides, recipe_path
from promptrec.models.p5.config import RunConfig
from promptrec.pipeline import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "lora": {},  # the recipe as shipped
    "full": {"model.tuning": {"method": "full"}},
    # The control: Gemma's architecture and tokenizer, random weights, every weight trained.
    "random": {"model.random_weights": True, "model.tuning": {"method": "full"}, "model.item_init": "random"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["lora", "random"], choices=sorted(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--steps", type=int, default=80, help="training steps of every run")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    ap.add_argument("--tag", default="", help="suffix of the run directories and result files (e.g. lr1e-4 with --set train.lr=0.0001)")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "gemma"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    Path(args.results).mkdir(parents=True, exist_ok=True)
    base = RunConfig.load(recipe_path("gemma_sequence"))
    for seed in args.seeds:
        for variant in args.variants:
            cfg = base.update({
                **VARIANTS[variant], "train.seed": seed, "train.epochs": 1,
                "train.examples_per_epoch": args.steps * base.train.batch_size, **parse_overrides(args.set),
            })
            name = f"{variant}-{args.tag}" if args.tag else variant
            run = Path(args.runs) / f"{name}-s{seed}"
            metrics = train_and_evaluate(cfg, run, command=command, progress=sys.stderr.isatty())
            m = metrics["model"]
            row = {"variant": variant, "tag": args.tag, "seed": seed, "steps": args.steps, **{k: m.get(k) for k in (
                "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR", "eval_users", "eval_seconds", "train_seconds", "steps",
                "trainable_parameters", "total_parameters", "device",
            )}, "popularity_HR@10": metrics["popularity"]["HR@10"], "popularity_NDCG@10": metrics["popularity"]["NDCG@10"],
                "run": str(run), "config": cfg.to_dict(), "command": command}
            (Path(args.results) / f"gemma_ml100k_{name.replace('-', '_')}_s{seed}.json").write_text(json.dumps(row, indent=2, default=str))
            print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)


if __name__ == "__main__":
    main()
