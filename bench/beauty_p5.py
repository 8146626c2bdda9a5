"""Amazon Beauty, sequential family: train and evaluate P5 with random and collaborative item ids.

Leave-one-out, all 12,101 items ranked for all 22,363 users, history excluded. Writes one JSON per
indexing method to bench/results/ with quality, invalid-output rates and wall-clock times, and
the command that reproduces it.

    python bench/beauty_p5.py --indexing random collaborative
    python bench/beauty_p5.py --indexing random --set train.epochs=1   # a quicker, weaker run
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
from promptrec.pipeline import evaluate_run, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "beauty.yaml"))
    ap.add_argument("--data", default=None, help="Beauty directory (default: the config's, ../shared/data/beauty)")
    ap.add_argument("--indexing", nargs="+", default=["random", "collaborative"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--runs", default=str(ROOT / "runs"), help="where run directories go")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--evaluate-only", action="store_true", help="re-evaluate runs/beauty_p5_<indexing>/model without training")
    args = ap.parse_args()


    overrides = parse_overrides(args.set)
    base = RunConfig.load(args.config)
    data_path = args.data or str((ROOT / base.data.path).resolve()) if base.data.path else None
    Path(args.results).mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    for method in args.indexing:
        cfg = base.update({"index.method": method, "data.path": data_path, **overrides})
        t0 = time.perf_counter()
        run_dir = Path(args.runs) / f"beauty_p5_{method}"
        if args.evaluate_only:
            metrics = evaluate_run(run_dir, command=command)
        else:
            metrics = train_and_evaluate(cfg, run_dir, command=command)
        metrics["wall_seconds"] = round(time.perf_counter() - t0, 2)
        out = Path(args.results) / f"beauty_p5_{method}.json"
        out.write_text(json.dumps(metrics, indent=2, default=str))
        print(json.dumps({"indexing": method, **{k: metrics["model"].get(k) for k in (
            "HR@5", "HR@10", "NDCG@5", "NDCG@10", "invalid_rate", "unconstrained_invalid_rate",
            "train_seconds", "eval_seconds", "users_per_second", "eval_users")},
            "popularity_HR@10": metrics["popularity"]["HR@10"], "results": str(out)}))


if __name__ == "__main__":
    main()
