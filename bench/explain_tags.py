"""Explanations against user-written text: BLEU/ROUGE with MovieLens latest-small tags.

    OMP_NUM_THREADS=1 python bench/explain_tags.py --data ../shared/data/ml-latest-small

The protocol is the library's (:mod:`promptrec.evaluation.explanations`, run by
:func:`promptrec.models.llm.explain.evaluate_against_tags`; the same as ``promptrec explain
--data DIR``): every movie a user both rated and tagged, at most ``--per-user`` per user, is
explained as if recommended right before the rating, from the user's items before it (the five
most recent shown, as ``promptrec recommend --explain`` shows them), with the movie's title,
genres and year (template family ``explanation``, greedy decoding). The reference is the user's
own tags on that movie. Tags are keywords: BLEU/ROUGE measure overlap with them, not sentence
quality, hence the baselines scored the same way (the title alone, a genre template, another
pair's sentence), the paired tests of per-pair ROUGE-1 F1, the hallucination rate, length and
seconds per explanation. This script adds the machine and the command to the library's JSON.
``--time-limit S`` stops generating after S seconds and scores what is done (the pairs go in a
seeded shuffled order); the JSON then says ``cut_by_time_limit``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from promptrec.data import load_dataset
from promptrec.models.llm.explain import Explainer, evaluate_against_tags

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-latest-small"),
                    help="MovieLens latest-small directory (ratings.csv, movies.csv, tags.csv)")
    ap.add_argument("--llm", default="gemma-3-270m", help="explaining LLM: packaged name, directory or .gguf file")
    ap.add_argument("--per-user", type=int, default=10, help="at most this many tagged pairs per user")
    ap.add_argument("--limit", type=int, default=None, help="explain at most this many pairs (a quick look)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="stop explaining after this many seconds and score the pairs explained so far")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--template", default="explain-1")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "explain_tags_ml-latest-small.json"))
    args = ap.parse_args()
    command = "python " + shlex.join(["bench/explain_tags.py", *sys.argv[1:]])
    load_start = os.getloadavg()

    data = load_dataset("movielens", args.data)
    if data.tags is None:
        sys.exit(f"{args.data} has no tags.csv")
    t0 = time.perf_counter()
    explainer = Explainer(args.llm, data.items, template=args.template)
    load_s = time.perf_counter() - t0
    found = evaluate_against_tags(explainer, data, per_user=args.per_user, seed=args.seed, limit=args.limit,
                                  time_limit=args.time_limit)
    out = {
        "data": "ml-latest-small", "llm": args.llm, "template": args.template, **found, "load_seconds": round(load_s, 1),
        "machine": {"torch_threads": 1 if os.environ.get("OMP_NUM_THREADS") == "1" else os.environ.get("OMP_NUM_THREADS"),
                    "cpus": os.cpu_count(), "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "command": command, "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=2, default=str))
    print("| text | BLEU-4 | BLEU-1 | ROUGE-1 F1 | ROUGE-1 recall | ROUGE-L F1 | words |")
    print("|---|---|---|---|---|---|---|")
    for name, o in out["overlap"].items():
        print(f"| {name} | {o['bleu']:.2f} | {o['bleu1']:.2f} | {o['rouge1_f']:.4f} | {o['rouge1_recall']:.4f} | "
              f"{o['rougeL_f']:.4f} | {o['mean_words']:.1f} |")
    print(json.dumps({k: v for k, v in out.items() if k not in ("examples", "overlap")}))


if __name__ == "__main__":
    main()
