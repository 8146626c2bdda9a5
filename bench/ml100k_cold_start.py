"""Cold-start items on MovieLens-100K: 10 % of the items never occur in training; can a P5 model
with semantic (text-derived) item ids recommend them?

Split: ``cold_item_split`` (leave-one-out; the cold items' events before the two targets are
dropped, targets may be cold). The semantic index embeds every item's text (MiniLM), fits its
residual k-means codebooks on training items only and gives cold items codes from their text, so
the decoding trie holds every catalogue item. Reported on the test split (and validation), all
1,682 items ranked, history excluded: HR/NDCG for users whose target is cold and for the rest,
for the P5 model as it is, the P5 model with cold items added after the generated items that
share their code prefix (TIGER's cold-start retrieval, at most a given share of the list),
popularity (fitted on the same training events) and a uniformly random ranking of the unseen
items (exact expectation).

    python bench/ml100k_cold_start.py                       # train (about 8 min on 2 cores) and evaluate
    python bench/ml100k_cold_start.py --model runs/ml100k_cold_start/model   # evaluate a trained model
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import Counter
from pathlib import Path


from promptrec.core.config import parse_overrides
from promptrec.models.classic.popularity import MostPopular
from promptrec.models.cold_start import ColdPrefixRecommender, evaluate_cold_start
from promptrec.data import cold_item_split
from promptrec.models.p5.model import P5Recommender
from promptrec.pipeline import load_data, quickstart_config

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="evaluate this trained model directory instead of training")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--fraction", type=float, default=0.1, help="share of the items held out of training")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the cold-item draw")
    ap.add_argument("--prefix-shares", type=float, nargs="*", default=[0.1, 0.2],
                    help="also rank with cold items added by code prefix, at most this share of the list")
    ap.add_argument("--output", default=str(ROOT / "runs" / "ml100k_cold_start"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "cold_start_ml100k.json"))
    args = ap.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    t0 = time.perf_counter()

    overrides = parse_overrides(args.set)
    # The quickstart model, trained for one whole epoch (the schedule decays to its end).
    cfg = quickstart_config().update({
        "index.method": "semantic", "index.params": {"levels": 2, "codebook": 32},
        "train.epochs": 1, "train.time_limit": 600, **overrides,
    })
    if args.model:
        rec = P5Recommender.from_pretrained(args.model)
        cfg = rec.config
    split = cold_item_split(load_data(cfg.data), fraction=args.fraction, seed=args.split_seed)
    if args.model:
        if rec.train_history != split.train_sequences():
            sys.exit(f"{args.model} was not trained on this cold-item split (fraction/seed differ)")
    else:
        out = Path(args.output)
        rec = P5Recommender(cfg).fit(split, output_dir=out)
        rec.save_pretrained(out / "model")

    # What the protocol promises, checked rather than assumed.
    cold = split.cold_items
    catalogue = set(split.data.items.index)
    assert not cold & {i for seq in rec.train_history.values() for i in seq}, "a cold item is in training"
    assert not cold & split.train_items(), "a cold item is in the training table"
    assert set(rec.catalogue()) == catalogue, "the decoding trie does not hold every catalogue item"
    codes = rec.indexer.codes
    trained_cells = {codes[i][:-1] for i in split.train_items()}

    k = max(cfg.eval.ks)
    models = {"p5": rec}
    for share in args.prefix_shares:
        # The cap counts cold items in the whole k-item list the harness asks for.
        name = f"p5 + cold by prefix (<= {round(share * k)} of {k})"
        models[name] = ColdPrefixRecommender(rec, share=share, cold_items=cold)
    models["popularity"] = MostPopular(seed=cfg.train.seed).fit(split)
    results = {}
    per_user = {}
    for stage in ("test", "valid"):
        res = evaluate_cold_start(models, split, stage=stage, k=k, metrics=METRICS)
        # Kept per user (HR@10, NDCG@10 of every model) so that two runs on the same split, such
        # as two item-text encoders, can be compared user by user (bench/cold_start_paired.py).
        per_user[stage] = {
            name: {str(u): [round(float(row["HR@10"]), 6), round(float(row["NDCG@10"]), 6)]
                   for u, row in table.iterrows()}
            for name, table in res.pop("per_user").items()
        }
        results[stage] = res

    data = split.data.interactions
    report = {
        "command": command,
        "protocol": "all-item ranking (every catalogue item a candidate, no sampled negatives), "
        "history excluded; cold users = target item held out of training",
        "split": {
            "fraction": args.fraction,
            "seed": args.split_seed,
            "items": len(catalogue),
            "cold_items": len(cold),
            "cold_events_total": int(data["item_id"].isin(cold).sum()),
            "train_events": len(split.train),
            "evaluated_users": len(split.test),
            "cold_test_targets": int(split.test["item_id"].isin(cold).sum()),
            "cold_valid_targets": int(split.valid["item_id"].isin(cold).sum()),
        },
        "index": {
            "method": cfg.index.method,
            "params": cfg.index.params,
            "code_length": rec.trie.code_length,
            "cells_with_training_items": len(trained_cells),
            "cold_items_in_a_cell_with_training_items": sum(codes[i][:-1] in trained_cells for i in cold),
            "largest_cell": max(Counter(c[:-1] for c in codes.values()).values()),
        },
        "all_item_check": {
            "candidates": len(catalogue),
            "trie_items": len(rec.catalogue()),
            "cold_items_in_trie": len(cold & set(rec.catalogue())),
            "sampled_negatives": False,
        },
        "fit_info": rec.fit_info_,
        "config": cfg.to_dict(),
        "results": results,
        "per_user_columns": ["HR@10", "NDCG@10"],
        "cold_users": {stage: sorted(map(str, split.targets(stage).loc[
            split.targets(stage)["item_id"].isin(cold), "user_id"])) for stage in ("test", "valid")},
        "per_user": per_user,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(report, indent=2, default=str))

    for stage, res in results.items():
        users = res["users"]
        print(f"\n{stage}: {users['all']} users ({users['cold']} cold targets, {users['warm']} warm); "
              f"all {res['candidates']} items ranked")
        print("| model | users | HR@10 | NDCG@10 | HR@20 | NDCG@20 | cold share of top 10 |")
        print("|---|---|---|---|---|---|---|")
        for name, m in res["models"].items():
            for group in ("cold", "warm", "all"):
                g = m[group]
                print(f"| {name} | {group} | {g['HR@10']:.4f} | {g['NDCG@10']:.4f} | {g['HR@20']:.4f} | "
                      f"{g['NDCG@20']:.4f} | {g['cold_share@10']:.4f} |")
    print(f"\nwritten {args.results}")


if __name__ == "__main__":
    main()
