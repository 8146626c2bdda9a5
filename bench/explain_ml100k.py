"""Explanations of recommendations by a pretrained LLM, checked for grounding, on MovieLens-100K.

    OMP_NUM_THREADS=2 python bench/explain_ml100k.py --model runs/quickstart/model --users 50 --k 4

For ``users`` x ``k`` recommendations of a saved model (any recommender; default: a popularity
model fitted here), Gemma 3 270M (or ``--llm``) writes one sentence on why each item suits the
user, from the user's five most recent items and the item's title and genres (template family
``explanation``). Reported: the hallucination rate (sentences naming a catalogue title or an
attribute value the prompt did not show), how often a sentence names anything at all, mean
length, empty answers and seconds per explanation; 20 examples go to the results file. MovieLens-100K
has no user-written text to compare against, so no BLEU/ROUGE is reported here.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from promptrec.core.config import DataConfig
from promptrec.core.recommender import build_recommender, load_recommender
from promptrec.data import leave_one_out
from promptrec.models.llm.explain import Explainer, grounding_summary
from promptrec.pipeline import load_data

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="saved recommender of MovieLens-100K (default: popularity fitted here)")
    ap.add_argument("--llm", default="gemma-3-270m", help="explaining LLM: packaged name, directory or .gguf file")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--template", default="explain-1")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "explain_ml100k.json"))
    args = ap.parse_args()
    command = "python " + shlex.join(["bench/explain_ml100k.py", *sys.argv[1:]])
    split = leave_one_out(load_data(DataConfig(loader="ml-100k")))
    rec = load_recommender(args.model) if args.model else build_recommender("popularity").fit(split)
    users = sorted(np.random.default_rng(args.seed).choice(split.test["user_id"], args.users, replace=False))
    recs = rec.recommend(users, k=args.k, stage="test")
    t0 = time.perf_counter()
    explainer = Explainer(args.llm, rec.item_table(), template=args.template)
    load_s = time.perf_counter() - t0
    pairs = [(rec.current_history(u, "test"), i) for u, i in zip(recs["user_id"], recs["item_id"])]
    t0 = time.perf_counter()
    found = explainer.explain(pairs)
    summary = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in grounding_summary(found).items()}
    out = {"recommender": rec.name, "llm": args.llm, "template": args.template, **summary,
           "wall_seconds": round(time.perf_counter() - t0, 1), "load_seconds": round(load_s, 1),
           "examples": [{"prompt": explainer.prompt(*pairs[n]), **found[n]} for n in range(min(20, len(found)))],
           "command": command, "date": time.strftime("%Y-%m-%d")}
    Path(args.results).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "examples"}))


if __name__ == "__main__":
    main()
