"""One P5 recipe, four backbones: T5 (encoder-decoder) against the decoder-only GPT-2, LLaMA and
Qwen2 at the same size preset, on MovieLens-100K (all 1,682 items ranked for all 943 users).

    python bench/ml100k_backbones.py --backbone t5 gpt2 llama qwen2
    python bench/ml100k_backbones.py --backbone gpt2 --set train.epochs=10 --set train.lr=0.001

Every row is the quickstart config (collaborative ids, mini preset) with the backbone swapped;
writes bench/results/backbones_ml100k_<backbone>.json with the metrics, the parameter count, the
training time and device, and the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


from promptrec.core.config import parse_overrides
from promptrec.pipeline import quickstart_config, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", nargs="+", default=["t5", "gpt2", "llama", "qwen2"])
    ap.add_argument("--data", default=None, help="MovieLens-100K directory (default: the cached copy)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "backbones"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    overrides = parse_overrides(args.set)
    if args.data:
        overrides["data.path"] = args.data
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    Path(args.results).mkdir(parents=True, exist_ok=True)
    for backbone in args.backbone:
        cfg = quickstart_config().update({"model.backbone": backbone, **overrides})
        metrics = train_and_evaluate(cfg, Path(args.runs) / backbone, command=command, progress=sys.stderr.isatty())
        m = metrics["model"]
        row = {"backbone": backbone, **{k: m.get(k) for k in (
            "HR@5", "HR@10", "NDCG@5", "NDCG@10", "invalid_rate", "unconstrained_invalid_rate", "eval_users",
            "eval_seconds", "train_seconds", "epochs_run", "steps", "total_parameters", "device",
        )}, "popularity_HR@10": metrics["popularity"]["HR@10"], "config": cfg.to_dict(), "command": command}
        out = Path(args.results) / f"backbones_ml100k_{backbone}.json"
        out.write_text(json.dumps(row, indent=2, default=str))
        print(json.dumps({k: v for k, v in row.items() if k != "config"}))


if __name__ == "__main__":
    main()
