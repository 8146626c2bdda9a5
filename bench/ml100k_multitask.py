"""MovieLens-100K with the whole P5 task mixture: sequential, direct yes/no, choose-from-candidates
and rating, in one model. Reports all-item ranking (HR/NDCG), the sampled choose-from-100 family
(labelled "sampled"), yes/no AUC and rating RMSE/MAE, beside popularity, in one results JSON.

    python bench/ml100k_multitask.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


from promptrec.core.config import parse_overrides
from promptrec.models.p5.config import RunConfig
from promptrec.pipeline import quickstart_config, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="run config (default: the quickstart's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--output", default=str(ROOT / "runs" / "ml100k_multitask"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "ml100k_multitask.json"))
    args = ap.parse_args()
    overrides = parse_overrides(args.set)
    weights = {"sequential": 1.0, "yesno": 0.5, "choose": 0.5, "rating": 0.5}
    base = RunConfig.load(args.config) if args.config else quickstart_config()
    cfg = base.update({"tasks.weights": weights, "train.time_limit": 480, **overrides})
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    metrics = train_and_evaluate(cfg, args.output, command=command)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(metrics, indent=2, default=str))
    keys = [k for k in metrics["model"] if k.startswith(("HR@10", "NDCG@10", "sampled", "yesno", "rating"))]
    print(json.dumps({k: metrics["model"][k] for k in keys} | {"popularity_HR@10": metrics["popularity"]["HR@10"]}))


if __name__ == "__main__":
    main()
