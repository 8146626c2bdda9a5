"""Template search and unseen templates on MovieLens-100K.

Trains the quickstart model (T5 ``mini``, collaborative ids, sequential family; training samples
only the *seen* templates) or loads a trained model directory, then ranks all items for every
user once per sequential template, seen and unseen, on validation and test. Reports each
template's HR/NDCG, the seen template with the best validation NDCG@10, and the test gap between
the unseen template and the mean of the seen ones (paired over users).

    python bench/ml100k_templates.py                                   # train (about 6 min) + search
    python bench/ml100k_templates.py --model runs/ml100k_templates/model   # search only
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path


from promptrec.core.config import parse_overrides
from promptrec.data import leave_one_out
from promptrec.models.p5.model import P5Recommender
from promptrec.models.classic.popularity import MostPopular
from promptrec.evaluation.ranking import evaluate_rankings
from promptrec.pipeline import load_data, quickstart_config, train_and_evaluate
from promptrec.models.p5.template_search import search_templates

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="search this trained model directory instead of training one")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (training)")
    ap.add_argument("--users", type=int, default=0, help="users to evaluate (0 = all)")
    ap.add_argument("--output", default=str(ROOT / "runs" / "ml100k_templates"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "templates_ml100k.json"))
    args = ap.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    model_dir = Path(args.model) if args.model else Path(args.output) / "model"
    if not args.model:
        overrides = parse_overrides(args.set)
        cfg = quickstart_config().update(overrides)
        train_and_evaluate(cfg, args.output, command=command)
    rec = P5Recommender.from_pretrained(model_dir)
    split = leave_one_out(load_data(rec.config.data))

    t0 = time.perf_counter()
    search = search_templates(rec, split, users=args.users, seed=rec.config.train.seed)
    seconds = time.perf_counter() - t0
    k = max(rec.config.eval.ks)
    popular = MostPopular().fit(split)
    pop = {stage: evaluate_rankings(popular, split, stage, k=k, users=search.users)[0] for stage in search.stages}

    report = {
        "command": command,
        "model": str(model_dir),
        "trained_on": [t.id for t in rec.templates.family("sequential", seen=True)],
        "training_mixture": rec.config.tasks.weights,
        "fit_info": rec.fit_info_,
        **search.to_dict(),
        "popularity": {s: {m: p[m] for m in search.metrics} for s, p in pop.items()},
        "search_seconds": round(seconds, 1),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(report, indent=2, default=str))

    print(search.format())
    cells = [f"{pop[s][m]:.4f}" for s in search.stages for m in ("HR@10", "NDCG@10")]
    print("| popularity | - | " + " | ".join(cells) + " |")
    for stage, g in report["gap"].items():
        for m in ("HR@10", "NDCG@10"):
            r = g[m]
            p = r["paired"]
            print(f"{stage} {m}: seen mean {r['seen']:.4f}, unseen {r['unseen']:.4f}, gap {r['gap']:+.4f} "
                  f"({r['relative_gap']:+.1%}), 95% CI [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}], "
                  f"t-test p {p['t_pvalue']:.3f}")
    print(f"written {args.results} ({seconds:.0f}s for {len(search.rows)} templates x {len(search.stages)} stages, "
          f"{len(search.users)} users)")


if __name__ == "__main__":
    main()
