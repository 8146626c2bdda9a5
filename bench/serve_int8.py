"""What int8 dynamic quantisation costs and buys for a served model.

The same saved model directory is evaluated twice on its own dataset's test split (all items
ranked, history excluded, same users): as saved (fp32) and with its Linear layers quantised to
int8 (``promptrec serve --quantize int8``). Also timed: one ``/recommend``-sized model call (k = 10)
for 1 and for 8 users, median of repeated calls. Prints one JSON object and writes it to
``bench/results/serve_int8.json``.

    python bench/serve_int8.py --model runs/quickstart/model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from promptrec.data import leave_one_out
from promptrec.evaluation.ranking import evaluate_rankings
from promptrec.models.p5.model import P5Recommender
from promptrec.pipeline import SUMMARY_KEYS, load_data
from promptrec.serving.engine import quantize_int8

ROOT = Path(__file__).resolve().parents[1]


def call_ms(rec: P5Recommender, users: list[str], repeats: int) -> float:
    rec.recommend(users, k=10)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        rec.recommend(users, k=10)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "runs" / "quickstart" / "model"), help="saved model directory")
    ap.add_argument("--users", type=int, default=0, help="evaluate this many test users (0 = all)")
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per batch size")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "serve_int8.json"))
    args = ap.parse_args()
    if not (Path(args.model) / "promptrec_config.json").is_file():
        raise SystemExit(f"{args.model} is not a model directory: run `promptrec quickstart` or pass --model DIR")
    if args.threads:
        torch.set_num_threads(args.threads)

    rec = P5Recommender.from_pretrained(args.model)
    split = leave_one_out(load_data(rec.config.data))
    users = list(split.test["user_id"])
    if args.users:
        users = users[: args.users]
    sample = [str(u) for u in users[:8]]
    results = {}
    for name in ("fp32", "int8"):
        if name == "int8":
            rec.model = quantize_int8(rec.model)
        start = time.perf_counter()
        summary, _ = evaluate_rankings(rec, split, stage="test", k=20, users=users)
        results[name] = {
            **{key: round(summary[key], 4) for key in SUMMARY_KEYS},
            "invalid_rate": summary["invalid_rate"],
            "eval_seconds": round(time.perf_counter() - start, 2),
            "call_ms_1_user": call_ms(rec, sample[:1], args.repeats),
            "call_ms_8_users": call_ms(rec, sample, args.repeats),
        }
    out = {
        "benchmark": "serve_int8",
        "model": args.model,
        "dataset": rec.config.data.loader,
        "users": len(users),
        "protocol": "leave-one-out test split, all items ranked, history excluded",
        **results,
        "delta_int8_minus_fp32": {k: round(results["int8"][k] - results["fp32"][k], 4) for k in SUMMARY_KEYS},
        "torch_threads": torch.get_num_threads(),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
