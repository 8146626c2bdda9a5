"""Explanations against user-written text: BLEU/ROUGE with MovieLens latest-small tags.

    OMP_NUM_THREADS=1 python bench/explain_tags.py --data ../shared/data/ml-latest-small

Protocol. A (user, movie) pair counts when the user both rated and tagged the movie. The movie is
held out: it is explained as if recommended to the user right before they rated it, from their
ratings before it (the five most recent shown, as ``promptrec recommend --explain`` shows them)
and the movie's title, genres and year (template family ``explanation``, greedy decoding). The
reference is that user's own tags on that movie, joined by ", " ("funny, will ferrell"). Too few
users tagged their leave-one-out test movie (7 of 610), hence every tagged pair, at most
``--per-user`` per user (seeded draw) so that the one prolific tagger does not make up the sample.

What the numbers mean: tags are one or two words; BLEU/ROUGE here measure how many of the user's
tag words the sentence contains, not how good the sentence is. They mean something only beside
baselines scored the same way on the same references:

- ``title``: the movie's title alone;
- ``genre template``: "Title (year) is a comedy, romance film." from the item table;
- ``other pair's sentence``: the LLM's sentence for a different pair (a seeded derangement),
  i.e. how much overlap any fluent movie sentence gets, whatever the movie.

Also reported: the hallucination rate (sentences naming a title or attribute the prompt did not
show), length and seconds per explanation, and paired tests of per-pair ROUGE-1 F1 (LLM minus
each baseline). ``--time-limit S`` stops generating after S seconds and scores what is done (the
pairs are explained in a seeded shuffled order); the JSON then says ``cut_by_time_limit``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from promptrec.data import load_dataset
from promptrec.evaluation.significance import paired_test
from promptrec.evaluation.text import segment_rouge, text_overlap
from promptrec.models.llm.explain import Explainer, grounding_summary

ROOT = Path(__file__).resolve().parents[1]


def tagged_pairs(data, per_user: int, seed: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """(user_id, item_id, history, reference) for pairs the user rated and tagged; ``history``:
    the user's items rated before it, oldest first."""
    tags = data.tags.sort_values("timestamp", kind="stable")
    refs = tags.groupby(["user_id", "item_id"], sort=True)["tag"].agg(lambda t: ", ".join(dict.fromkeys(t)))
    sequences = data.sequences()
    rows = []
    for (user, item), reference in refs.items():
        seq = sequences.get(user, [])
        if item in seq:
            rows.append((user, item, seq[: seq.index(item)], reference))
    pairs = pd.DataFrame(rows, columns=["user_id", "item_id", "history", "reference"])
    rng = np.random.default_rng(seed)
    keep = []
    for _, group in pairs.groupby("user_id", sort=True):
        keep.extend(sorted(rng.choice(group.index, min(per_user, len(group)), replace=False)))
    counts = {
        "tag_rows": len(data.tags),
        "tagging_users": int(data.tags["user_id"].nunique()),
        "tagged_pairs": len(refs),
        "tagged_and_rated_pairs": len(pairs),
        "users_with_tagged_and_rated_pairs": int(pairs["user_id"].nunique()),
        "largest_user_share_before_cap": round(float(pairs["user_id"].value_counts().iloc[0] / len(pairs)), 3),
    }
    return pairs.loc[keep].reset_index(drop=True), counts


def genre_sentence(items: pd.DataFrame, item: str) -> str:
    title = items.at[item, "title"] or item
    genres = [g.lower() for g in items.at[item, "categories"]]
    return f"{title} is a {', '.join(genres)} film." if genres else f"{title} is a film."


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed point (n >= 2)."""
    rng = np.random.default_rng(seed)
    while True:
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-latest-small"),
                    help="MovieLens latest-small directory (ratings.csv, movies.csv, tags.csv)")
    ap.add_argument("--llm", default="gemma-3-270m", help="explaining LLM: packaged name, directory or .gguf file")
    ap.add_argument("--per-user", type=int, default=10, help="at most this many tagged pairs per user")
    ap.add_argument("--limit", type=int, default=None, help="explain at most this many pairs (a quick look)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="stop explaining after this many seconds and score the pairs explained so far "
                    "(pairs go in a seeded shuffled order, so a cut sample still spans the users)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--template", default="explain-1")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "explain_tags_ml-latest-small.json"))
    args = ap.parse_args()
    command = "python " + shlex.join(["bench/explain_tags.py", *sys.argv[1:]])
    load_start = os.getloadavg()

    data = load_dataset("movielens", args.data)
    if data.tags is None:
        sys.exit(f"{args.data} has no tags.csv")
    pairs, counts = tagged_pairs(data, args.per_user, args.seed)
    # A seeded shuffle: a run cut short by --limit or --time-limit keeps a sample of every user.
    pairs = pairs.sample(frac=1.0, random_state=args.seed).reset_index(drop=True)
    if args.limit:
        pairs = pairs.iloc[: args.limit]
    drawn = len(pairs)
    items = data.items
    t0 = time.perf_counter()
    explainer = Explainer(args.llm, items, template=args.template)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    work = list(zip(pairs["history"], pairs["item_id"]))
    found = []
    for start in range(0, len(work), explainer.batch_size):
        if args.time_limit is not None and time.perf_counter() - t0 > args.time_limit:
            break
        found.extend(explainer.explain(work[start : start + explainer.batch_size]))
    wall = time.perf_counter() - t0
    pairs = pairs.iloc[: len(found)]

    references = pairs["reference"].tolist()
    llm = [r["explanation"] for r in found]
    systems = {
        "llm": llm,
        "title": [items.at[i, "title"] or i for i in pairs["item_id"]],
        "genre template": [genre_sentence(items, i) for i in pairs["item_id"]],
        "other pair's sentence": [llm[j] for j in derangement(len(llm), args.seed)],
    }
    overlap = {name: {k: round(v, 4) for k, v in text_overlap(hyps, references).items()} for name, hyps in systems.items()}
    per_pair = {name: pd.Series(segment_rouge(hyps, references)["rouge1_f"]) for name, hyps in systems.items()}
    paired = {
        f"llm - {name}": {k: (round(v, 5) if isinstance(v, float) else v)
                          for k, v in paired_test(per_pair["llm"], per_pair[name], seed=args.seed).items()}
        for name in systems if name != "llm"
    }
    summary = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in grounding_summary(found).items()}
    out = {
        "what": "BLEU/ROUGE of one-sentence explanations against the user's own tags on the explained movie "
                "(overlap with short keywords, not sentence quality), beside baselines scored the same way",
        "data": "ml-latest-small", "llm": args.llm, "template": args.template,
        "pairs": {**counts, "per_user_cap": args.per_user, "drawn": drawn, "explained": len(pairs),
                  "cut_by_time_limit": len(pairs) < drawn,
                  "users": int(pairs["user_id"].nunique()), "empty_history": int((pairs["history"].str.len() == 0).sum()),
                  "largest_user_share": round(float(pairs["user_id"].value_counts().iloc[0] / len(pairs)), 3)},
        "overlap": overlap,
        "paired_rouge1_f": paired,
        "grounding": summary,
        "wall_seconds": round(wall, 1), "load_seconds": round(load_s, 1),
        "machine": {"torch_threads": 1 if os.environ.get("OMP_NUM_THREADS") == "1" else os.environ.get("OMP_NUM_THREADS"),
                    "cpus": os.cpu_count(), "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "examples": [{"user_id": u, "item_id": i, "reference": ref, "prompt": explainer.prompt(h, i), **found[n]}
                     for n, (u, i, h, ref) in enumerate(pairs.itertuples(index=False)) if n < 20],
        "command": command, "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=2, default=str))
    print("| text | BLEU-4 | BLEU-1 | ROUGE-1 F1 | ROUGE-1 recall | ROUGE-L F1 | words |")
    print("|---|---|---|---|---|---|---|")
    for name, o in overlap.items():
        print(f"| {name} | {o['bleu']:.2f} | {o['bleu1']:.2f} | {o['rouge1_f']:.4f} | {o['rouge1_recall']:.4f} | "
              f"{o['rougeL_f']:.4f} | {o['mean_words']:.1f} |")
    print(json.dumps({k: v for k, v in out.items() if k not in ("examples", "overlap")}))


if __name__ == "__main__":
    main()
