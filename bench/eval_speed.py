"""Full-ranking evaluation speed on Amazon Beauty: all users, all 12,101 items, history excluded.

Times ``recommend(k=20)`` (trie-constrained beam search with 20 beams) for every evaluated user.
The cost does not depend on the weights, so by default it times a freshly built model of the given
preset (``small`` has t5-small's dimensions); ``--model DIR`` times a trained model instead.

    python bench/eval_speed.py --preset small
    python bench/eval_speed.py --preset small --users 2000 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from promptrec.data import leave_one_out, load_dataset
from promptrec.models.p5.config import RunConfig
from promptrec.models.p5.model import P5Recommender

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "beauty"))
    ap.add_argument("--preset", default="small")
    ap.add_argument("--indexing", default="random")
    ap.add_argument("--model", default=None, help="time a trained model directory instead")
    ap.add_argument("--users", type=int, default=0, help="time this many users (0 = all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--output", default=None, help="results JSON (default bench/results/eval_speed_<preset>_<precision>.json)")
    args = ap.parse_args()

    split = leave_one_out(load_dataset("p5", args.data))
    if args.model:
        rec = P5Recommender.from_pretrained(args.model)
        rec.config = rec.config.update({"eval.batch_size": args.batch_size, "eval.precision": args.precision})
    else:
        cfg = RunConfig().update({
            "model.preset": args.preset, "index.method": args.indexing,
            "eval.batch_size": args.batch_size, "eval.precision": args.precision,
        })
        rec = P5Recommender(cfg).build(split)
    users = list(split.test["user_id"])
    if args.users:
        users = users[: args.users]
    t0 = time.perf_counter()
    recs = rec.recommend(users, k=20, stage="test", progress=True)
    seconds = time.perf_counter() - t0
    result = {
        "benchmark": "beauty_full_ranking_eval_speed",
        "preset": rec.config.model.preset,
        "parameters": sum(p.numel() for p in rec.model.parameters()),
        "indexing": rec.config.index.method,
        "code_length": len(next(iter(rec.indexer.codes.values()))),
        "precision": args.precision,
        "users": len(users),
        "items_ranked": len(rec.catalogue()),
        "k": 20,
        "beams": 20,
        "batch_size": args.batch_size,
        "seconds": round(seconds, 2),
        "users_per_second": round(len(users) / seconds, 2),
        "projected_seconds_all_users": round(len(split.test) / (len(users) / seconds), 1),
        "rows_returned": len(recs),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    out = Path(args.output or ROOT / "bench" / "results" / f"eval_speed_{result['preset']}_{args.precision}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
