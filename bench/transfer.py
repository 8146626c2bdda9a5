"""Cross-domain transfer: pretrain P5 on Amazon Beauty, then adapt it to Amazon Sports.

One command per row; each writes bench/results/transfer_<row>.json (HR/NDCG on Sports test users,
all 18,357 items ranked, history excluded; trainable parameters; training time; the command).

    python bench/transfer.py --row beauty        # pretrain on Beauty (the base of the other rows)
    python bench/transfer.py --row scratch       # Sports from random init, same size and epochs
    python bench/transfer.py --row zeroshot      # the Beauty model on Sports, no training
    python bench/transfer.py --row full          # fine-tune every weight on Sports
    python bench/transfer.py --row lora          # LoRA (+ token embeddings), base frozen
    python bench/transfer.py --row prompt        # soft prompt (+ token embeddings), base frozen
    python bench/transfer.py --row prefix        # prefix tuning (+ token embeddings), base frozen

``--base DIR`` starts the Sports rows from another Beauty model directory (e.g. the one that
``python bench/beauty_p5.py --indexing collaborative`` trains).

Both datasets get their own collaborative item ids, fitted on their training data: the codes are
the same token inventory, but a code names a Sports item on Sports. What can carry over is how the
LM reads a prompt and a history of codes, not which item a code is; zero-shot is therefore near
chance, and the question is whether starting from Beauty beats starting from scratch.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from promptrec.core.config import parse_overrides
from promptrec.models.p5.config import RunConfig
from promptrec.pipeline import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# Per tuning method: what is adapted, and the learning rate usual for it (soft prompts and
# prefixes need a larger one than weights do).
ROWS = {
    "beauty": {},
    "scratch": {},
    "zeroshot": {"train.epochs": 0},
    "full": {"model.tuning": {"method": "full"}},
    "lora": {"model.tuning": {"method": "lora", "r": 16, "alpha": 32}, "train.lr": 0.003},
    "prompt": {"model.tuning": {"method": "prompt", "virtual_tokens": 20}, "train.lr": 0.01},
    "prefix": {"model.tuning": {"method": "prefix", "virtual_tokens": 20}, "train.lr": 0.005},
    "ia3": {"model.tuning": {"method": "ia3"}, "train.lr": 0.005},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", required=True, choices=sorted(ROWS))
    ap.add_argument("--beauty", default=str(SHARED / "beauty"), help="Beauty directory")
    ap.add_argument("--sports", default=str(SHARED / "sports"), help="Sports directory")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (every row)")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "transfer"), help="where run directories go")
    ap.add_argument("--base", default=None, help="the Beauty model directory (default: RUNS/beauty/model, from --row beauty)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--generic-search", action="store_true", help="decode with generate() + the trie processor only")
    args = ap.parse_args()
    overrides = parse_overrides(args.set)
    if args.generic_search:
        overrides["eval.search"] = "generate"
    runs = Path(args.runs)
    # The T5 P5 recipe as the Beauty runs had it (bench/README.md, "Configs").
    beauty = {"data.loader": "p5", "data.path": "../shared/data/beauty", "model.max_history": 20, "train.epochs": 6,
              "train.time_limit": None, "train.val_users": 2000, "eval.unconstrained_users": 500}
    base = RunConfig.load("t5_p5").update({**beauty, "index.method": "collaborative", **overrides})
    if args.row == "beauty":
        cfg = base.update({"data.path": args.beauty})
    else:
        cfg = base.update({"data.path": args.sports, **ROWS[args.row]})
        if args.row != "scratch":
            pretrained = Path(args.base) if args.base else runs / "beauty" / "model"
            if not (pretrained / "promptrec_config.json").exists():
                sys.exit(f"{pretrained} not found: run `python bench/transfer.py --row beauty` first")
            cfg = cfg.update({"model.pretrained": str(pretrained)})
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    t0 = time.perf_counter()
    metrics = train_and_evaluate(cfg, runs / args.row, command=command, progress=sys.stderr.isatty())
    model = metrics["model"]
    row = {
        "row": args.row,
        "dataset": "beauty" if args.row == "beauty" else "sports",
        "tuning": cfg.model.tuning.method if args.row not in ("zeroshot", "beauty", "scratch") else args.row,
        **{k: model.get(k) for k in (
            "HR@5", "HR@10", "NDCG@5", "NDCG@10", "invalid_rate", "eval_users", "eval_seconds",
            "train_seconds", "trainable_parameters", "total_parameters", "best_valid_NDCG@10", "epochs_run", "device",
        )},
        "popularity_HR@10": metrics["popularity"]["HR@10"],
        "popularity_NDCG@10": metrics["popularity"]["NDCG@10"],
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "config": cfg.to_dict(),
        "command": command,
    }
    Path(args.results).mkdir(parents=True, exist_ok=True)
    out = Path(args.results) / f"transfer_{args.row}.json"
    out.write_text(json.dumps(row, indent=2, default=str))
    print(json.dumps({k: v for k, v in row.items() if k != "config"}))


if __name__ == "__main__":
    main()
