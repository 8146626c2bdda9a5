"""A pretrained LLM as the ``llm`` recommender over the OpenAI protocol: Gemma 3 270M (a base
model) behind ``transformers serve`` on loopback, on MovieLens-100K, whose titles it may know.

    promptrec models get gemma-3-270m
    OMP_NUM_THREADS=1 python bench/llm_gemma_ml100k.py --users 200

Rows, on the same seeded sample of test users:

- **LLMRank protocol (sampled)**: the test item among 19 random items the user has not seen,
  labelled A-T in popularity order; the LLM orders the letters (zero-shot, then with one
  demonstration from another user's training data). HR@10/NDCG@10 are over those 20 candidates
  only: a *sampled* metric, not comparable to all-item ranking. Popularity's order of the same
  candidates is the reference.
- **rerank of BPR's top-20 over all items** (one demonstration): all items ranked, history
  excluded, BPR's order filling what the reply leaves out; BPR alone is the reference.

Each row reports invalid-answer, parse-failure and fill rates, requests, cache hits, tokens and
wall time. Replies are cached under ``runs/llm_gemma/cache`` (keyed by endpoint, so the port is
fixed): the same command again answers from the cache.
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from promptrec.core.config import DataConfig
from promptrec.core.recommender import build_recommender
from promptrec.data import leave_one_out
from promptrec.evaluation.ranking import evaluate_rankings
from promptrec.models.llm import LLMRecommender
from promptrec.models.p5.export import serve_chat_model
from promptrec.pipeline import load_data
from promptrec.pretrained import get_model
from promptrec.pretrained.chat import transcript_chat_directory

ROOT = Path(__file__).resolve().parents[1]


def sampled_candidates(split, users, n: int, seed: int) -> dict[str, list[str]]:
    """LLMRank's list: the test item and ``n - 1`` random items outside the user's history."""
    rng = np.random.default_rng(seed)
    catalogue = np.array(sorted(map(str, split.data.items.index)))
    target = dict(zip(split.test["user_id"].astype(str), split.test["item_id"].astype(str)))
    out = {}
    for u in users:
        seen = set(split.history("test").get(u, [])) | {target[u]}
        pool = [i for i in rng.permutation(catalogue)[: 4 * n] if i not in seen][: n - 1]
        out[u] = [target[u], *pool]
    return out


def sampled_metrics(recs: pd.DataFrame, split, k: int = 10) -> dict[str, float]:
    target = dict(zip(split.test["user_id"].astype(str), split.test["item_id"].astype(str)))
    hr, ndcg = [], []
    for u, g in recs.groupby("user_id", sort=False):
        ranked = list(g["item_id"])[:k]
        r = ranked.index(target[u]) + 1 if target[u] in ranked else None
        hr.append(1.0 if r else 0.0)
        ndcg.append(1.0 / np.log2(r + 1) if r else 0.0)
    return {"HR@10": round(float(np.mean(hr)), 4), "NDCG@10": round(float(np.mean(ndcg)), 4), "eval_users": len(hr)}


def emit(name: str, metrics: dict, rec=None, extra: dict | None = None, rows: list | None = None) -> None:
    out = {"row": name, **metrics}
    if isinstance(rec, LLMRecommender):
        out.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.stats().items()})
    out.update(extra or {})
    print(json.dumps(out), flush=True)
    rows.append(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llm", default="gemma-3-270m", help="packaged model name, directory or .gguf file")
    ap.add_argument("--rows", nargs="+", default=["llmrank0", "llmrank1", "rerank1"])
    ap.add_argument("--max-tokens", type=int, default=24, help="reply length bound (10 letters, one per line)")
    ap.add_argument("--max-history", type=int, default=10, help="most recent history titles in a prompt")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "llm_gemma"))
    ap.add_argument("--port", type=int, default=8432, help="loopback port (part of the cache key)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "llm_gemma_ml100k.jsonl"))
    args = ap.parse_args()
    command = "OMP_NUM_THREADS=1 python " + shlex.join(["bench/llm_gemma_ml100k.py", *sys.argv[1:]])
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    split = leave_one_out(load_data(DataConfig(loader="ml-100k")))
    users = sorted(map(str, np.random.default_rng(args.seed).choice(split.test["user_id"], args.users, replace=False)))
    chat = transcript_chat_directory(get_model(args.llm), runs / "chat")
    cands = sampled_candidates(split, users, 20, args.seed)
    popularity = build_recommender("popularity").fit(split)
    bpr = build_recommender("bpr").fit(split)
    rows: list[dict] = []
    emit("LLMRank protocol (sampled, 20 candidates): popularity order", sampled_metrics(
        popularity.recommend(users, k=10, candidates=cands), split), rows=rows)
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", args.port)) == 0:
            raise SystemExit(f"port {args.port} is taken: pass --port (the response cache is keyed by the endpoint)")
    t = time.perf_counter()
    proc, url = serve_chat_model(chat, args.port, runs / "transformers_serve.log")
    start_s = round(time.perf_counter() - t, 1)
    common = dict(base_url=url, model=str(chat), mode="rerank", candidates=20, cache_dir=str(runs / "cache"),
                  timeout=600, concurrency=1, max_tokens=args.max_tokens, max_history=args.max_history)
    try:
        for name in args.rows:
            shots = int(name[-1])
            t = time.perf_counter()
            if name.startswith("llmrank"):
                rec = LLMRecommender(**common, shots=shots, retriever="popularity").fit(split, retriever=popularity)
                metrics = sampled_metrics(rec.recommend(users, k=10, candidates=cands), split)
                label = f"LLMRank protocol (sampled, 20 candidates): {args.llm}, {shots}-shot"
            else:
                rec = LLMRecommender(**common, shots=shots, retriever="bpr").fit(split, retriever=bpr)
                summary, _ = evaluate_rankings(rec, split, stage="test", k=10, users=users, metrics=("HR@10", "NDCG@10"))
                metrics = {m: round(summary[m], 4) for m in ("HR@10", "NDCG@10")} | {"eval_users": summary["eval_users"]}
                label = f"rerank of bpr top-20 (all items ranked): {args.llm}, {shots}-shot"
            emit(label, metrics, rec, {"wall_seconds": round(time.perf_counter() - t, 1), "server_start_seconds": start_s},
                 rows=rows)
    finally:
        proc.terminate()
        proc.wait(30)
    summary, _ = evaluate_rankings(bpr, split, stage="test", k=10, users=users, metrics=("HR@10", "NDCG@10"))
    emit("bpr alone (all items ranked)", {m: round(summary[m], 4) for m in ("HR@10", "NDCG@10")}, rows=rows)
    with open(args.results, "a") as f:
        f.writelines(json.dumps({**r, "command": command, "date": time.strftime("%Y-%m-%d")}) + "\n" for r in rows)
    print(json.dumps({"command": command, "results": args.results}))


if __name__ == "__main__":
    main()
