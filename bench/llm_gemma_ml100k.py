"""A pretrained LLM as the ``llm`` recommender over the OpenAI protocol: Gemma 3 270M (a base
model) behind ``transformers serve`` on loopback, on MovieLens-100K, whose titles it may know.

    promptrec models get gemma-3-270m
    OMP_NUM_THREADS=1 python bench/llm_gemma_ml100k.py --users 200            # test item
    OMP_NUM_THREADS=1 python bench/llm_gemma_ml100k.py --users 20 --stage valid \\
        --rows llmrank:chat-rerank-3:0 llmrank:chat-rerank-4:0 ...            # choosing prompts

A row is ``KIND:TEMPLATE:SHOTS``, on the same seeded sample of users:

- ``llmrank`` (**sampled**): the held-out item among 19 random items the user has not seen,
  labelled A-T in a random order seeded by the user (LLMRank; so that a model that only repeats
  the first letters scores at chance); the LLM names the letters of its top 10, the rest of the
  list is filled in popularity order. HR@10/NDCG@10 are over those 20 candidates only: a sampled
  metric, not comparable to all-item ranking. Reference: popularity's order of the same 20.
- ``rerank``: BPR's top 20 over all items (history excluded), labelled in BPR's order; the LLM
  names its top 10, BPR's order fills the rest. Reference: BPR alone, on the same users.

``--stage valid`` scores against each user's validation item (history before it), for choosing
prompts without looking at the test item. Each row reports HR@10/NDCG@10, invalid-answer,
parse-failure and fill rates, the share of users whose top 10 is the reference's (a model that
echoes its input), requests, cache hits, tokens, wall time, and a paired test against the
reference. Replies are cached under ``runs/llm_gemma/cache`` (keyed by endpoint, so the port is
fixed): the same command again answers from the cache. The server and this process each run on
one thread (``OMP_NUM_THREADS=1``); the JSON records the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from promptrec.core.config import DataConfig
from promptrec.core.recommender import build_recommender, load_recommender
from promptrec.data import leave_one_out
from promptrec.evaluation.ranking import evaluate_rankings
from promptrec.evaluation.significance import paired_test
from promptrec.models.llm import LLMRecommender
from promptrec.models.p5.export import serve_chat_model
from promptrec.pipeline import load_data
from promptrec.pretrained import get_model
from promptrec.pretrained.chat import transcript_chat_directory

ROOT = Path(__file__).resolve().parents[1]
K = 10


def targets(split, stage: str) -> dict[str, str]:
    t = split.targets(stage)
    return dict(zip(t["user_id"].astype(str), t["item_id"].astype(str)))


def sampled_candidates(split, users, stage: str, n: int, seed: int) -> dict[str, list[str]]:
    """LLMRank's list: the held-out item and ``n - 1`` random items outside the user's history
    (and outside the test item, so that a validation list never holds it)."""
    rng = np.random.default_rng(seed)
    catalogue = np.array(sorted(map(str, split.data.items.index)))
    target, test = targets(split, stage), targets(split, "test")
    out = {}
    for u in users:
        seen = set(split.history(stage).get(u, [])) | {target[u], test[u]}
        pool = [i for i in rng.permutation(catalogue)[: 4 * n] if i not in seen][: n - 1]
        out[u] = [target[u], *pool]
    return out


def sampled_per_user(recs: pd.DataFrame, target: dict[str, str]) -> pd.DataFrame:
    rows = []
    for u, g in recs.groupby("user_id", sort=False):
        ranked = list(g["item_id"])[:K]
        r = ranked.index(target[u]) + 1 if target[u] in ranked else None
        rows.append({"user_id": u, "HR@10": 1.0 if r else 0.0, "NDCG@10": 1.0 / np.log2(r + 1) if r else 0.0})
    return pd.DataFrame(rows).set_index("user_id")


def summary(per_user: pd.DataFrame) -> dict:
    return {m: round(float(per_user[m].mean()), 4) for m in ("HR@10", "NDCG@10")} | {"eval_users": len(per_user)}


def same_top(recs: pd.DataFrame, ref: pd.DataFrame) -> float:
    """The share of users whose top 10 is the reference's, in the same order."""
    a = recs.groupby("user_id", sort=False)["item_id"].apply(lambda s: list(s)[:K])
    b = ref.groupby("user_id", sort=False)["item_id"].apply(lambda s: list(s)[:K])
    return round(float(np.mean([a[u] == b.get(u) for u in a.index])), 4)


def paired(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    t = paired_test(a["NDCG@10"], b["NDCG@10"])
    return {"vs_reference_NDCG@10": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in t.items()
                                     if k in ("n", "mean_diff", "ci_low", "ci_high", "t_pvalue", "wilcoxon_pvalue")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage", choices=("valid", "test"), default="test", help="which held-out item is scored")
    ap.add_argument("--llm", default="gemma-3-270m", help="packaged model name, directory or .gguf file")
    ap.add_argument("--rows", nargs="+", default=["llmrank:chat-rerank-5:0", "llmrank:chat-rerank-5:1",
                                                  "rerank:chat-rerank-5:1"], help="KIND:TEMPLATE:SHOTS ...")
    ap.add_argument("--separator", default=" ", help="how a demonstration's letters are joined")
    ap.add_argument("--max-tokens", type=int, default=10, help="reply length bound (10 letters on one line)")
    ap.add_argument("--max-history", type=int, default=10, help="most recent history titles in a prompt")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "llm_gemma"))
    ap.add_argument("--port", type=int, default=8432, help="loopback port (part of the cache key)")
    ap.add_argument("--cached", action="store_true",
                    help="answer from the response cache only, starting no server (a miss fails and is counted)")
    ap.add_argument("--results", default=None, help="JSON output (default: bench/results/llm_gemma_ml100k[_valid].json)")
    args = ap.parse_args()
    command = "OMP_NUM_THREADS=1 python " + shlex.join(["bench/llm_gemma_ml100k.py", *sys.argv[1:]])
    results = Path(args.results or ROOT / "bench" / "results" / f"llm_gemma_ml100k{'_valid' if args.stage == 'valid' else ''}.json")
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    split = leave_one_out(load_data(DataConfig(loader="ml-100k")))
    users = sorted(map(str, np.random.default_rng(args.seed).choice(split.test["user_id"], args.users, replace=False)))
    target = targets(split, args.stage)
    chat = transcript_chat_directory(get_model(args.llm), runs / "chat")
    cands = sampled_candidates(split, users, args.stage, 20, args.seed)
    popularity = build_recommender("popularity").fit(split)
    t = time.perf_counter()
    if (runs / "bpr").is_dir():  # fitted once (seeded) and reused: minutes on one shared thread
        bpr = load_recommender(runs / "bpr")
    else:
        bpr = build_recommender("bpr").fit(split)
        bpr.save_pretrained(runs / "bpr")
    bpr_fit_s = round(time.perf_counter() - t, 1)

    rows: list[dict] = []
    head = {"command": command, "stage": args.stage, "users": len(users),
            "machine": f"{os.cpu_count()} CPU cores shared with other jobs, server and bench on one thread each"}

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)
        rows.append(row | {"load_average": [round(x, 2) for x in os.getloadavg()]})
        # Written after every row: a run stopped early keeps what it measured.
        out = head | {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
        results.write_text(json.dumps(out, indent=1) + "\n")

    pop_recs = popularity.recommend(users, k=K, stage=args.stage, candidates=cands)
    pop_user = sampled_per_user(pop_recs, target)
    emit({"row": "LLMRank protocol (sampled, 20 candidates): popularity order", "sampled": True, **summary(pop_user)})
    bpr_sum, bpr_user = evaluate_rankings(bpr, split, stage=args.stage, k=K, users=users, metrics=("HR@10", "NDCG@10"))
    bpr_user = bpr_user.set_index("user_id")
    bpr_recs = bpr.recommend(users, k=K, stage=args.stage)
    emit({"row": "bpr alone (all items ranked)", "sampled": False,
          **{m: round(bpr_sum[m], 4) for m in ("HR@10", "NDCG@10")}, "eval_users": bpr_sum["eval_users"],
          "fit_or_load_seconds": bpr_fit_s})

    with socket.socket() as s:
        if not args.cached and s.connect_ex(("127.0.0.1", args.port)) == 0:
            raise SystemExit(f"port {args.port} is taken: pass --port (the response cache is keyed by the endpoint)")
    t = time.perf_counter()
    if args.cached:
        proc, url = None, f"http://127.0.0.1:{args.port}/v1"
    else:
        proc, url = serve_chat_model(chat, args.port, runs / "transformers_serve.log")
    head["server_start_seconds"] = round(time.perf_counter() - t, 1)
    common = dict(base_url=url, model=str(chat), mode="rerank", candidates=20, cache_dir=str(runs / "cache"),
                  timeout=600, concurrency=1, max_retries=0 if args.cached else 4, max_tokens=args.max_tokens, max_history=args.max_history,
                  separator=args.separator)
    try:
        for spec in args.rows:
            kind, template, shots = spec.split(":")
            shots = int(shots)
            t = time.perf_counter()
            if kind == "llmrank":
                rec = LLMRecommender(**common, template=template, shots=shots, retriever="popularity",
                                     candidate_order="shuffled").fit(split, retriever=popularity)
                recs = rec.recommend(users, k=K, stage=args.stage, candidates=cands)
                wall, stats = round(time.perf_counter() - t, 1), rec.stats()
                per_user, ref_user, ref_recs = sampled_per_user(recs, target), pop_user, pop_recs
                label = f"LLMRank protocol (sampled, 20 candidates): {args.llm}, {template}, {shots}-shot"
                metrics = {"sampled": True, **summary(per_user)}
            elif kind == "rerank":
                rec = LLMRecommender(**common, template=template, shots=shots, retriever="bpr").fit(split, retriever=bpr)
                s, per_user = evaluate_rankings(rec, split, stage=args.stage, k=K, users=users, metrics=("HR@10", "NDCG@10"))
                wall, stats = round(time.perf_counter() - t, 1), rec.stats()
                per_user, ref_user, ref_recs = per_user.set_index("user_id"), bpr_user, bpr_recs
                recs = rec.recommend(users, k=K, stage=args.stage)  # the same lists, from the cache
                label = f"rerank of bpr top-20 (all items ranked): {args.llm}, {template}, {shots}-shot"
                metrics = {"sampled": False, **{m: round(s[m], 4) for m in ("HR@10", "NDCG@10")}, "eval_users": s["eval_users"]}
            else:
                raise SystemExit(f"unknown row kind {kind!r} in {spec!r}: llmrank or rerank")
            stats = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()}
            emit({"row": label, **metrics, "same_top10_as_reference": same_top(recs, ref_recs), **stats,
                  "wall_seconds": wall, "seconds_per_request": round(wall / stats["requests"], 2) if stats["requests"] else None,
                  **paired(per_user, ref_user.loc[per_user.index])})
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    print(json.dumps({"command": command, "results": str(results)}))


if __name__ == "__main__":
    main()
