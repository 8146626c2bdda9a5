"""The ``llm`` recommender end to end on MovieLens-100K, against ``transformers serve`` on loopback.

1. Trains (or reuses) a promptrec decoder on MovieLens-100K (``ml100k_decoder``: a
   GPT-2 of the mini preset, one token per item, whole-sequence and candidate-choice prompts) and
   exports it as a plain transformers chat model (:func:`promptrec.models.p5.export.export_chat_model`).
2. Starts ``transformers serve`` (an implementation independent of promptrec) on that directory.
3. Evaluates, on the same seeded sample of test users, all items ranked, history excluded:
   - ``generate``: the served decoder names the next item (greedy, one code per reply); the list
     is filled from popularity;
   - ``generate`` with ``--samples`` replies per user at temperature 1, items ranked by votes;
   - ``rerank``: a retriever (BPR-MF by default) proposes 20 candidates, the served decoder picks
     one with a candidate-choice prompt; the rest keep the retriever's order;
   - the retriever alone, and the decoder ranked by promptrec itself (constrained, exact), for
     reference.

Each row (HR/NDCG@10, invalid-answer, parse-failure and fill rates, requests, cache hits,
tokens, wall time) is printed as JSON and appended to ``bench/results/llm_ml100k.jsonl``. Replies
are cached under ``runs/llm_ml100k/cache`` (keyed by endpoint, so the port is fixed): running the
same command again makes no request.

    OMP_NUM_THREADS=2 python bench/llm_ml100k.py --users 500
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

from promptrec.core.config import recipe_path
from promptrec.core.recommender import build_recommender, load_recommender
from promptrec.data import leave_one_out
from promptrec.evaluation.ranking import evaluate_rankings
from promptrec.models.llm import LLMRecommender
from promptrec.models.p5.config import RunConfig
from promptrec.models.p5.export import export_chat_model, serve_chat_model
from promptrec.pipeline import load_data, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("HR@10", "NDCG@10")


def check_port_free(port: int) -> None:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"port {port} is taken: pass --port (the response cache is keyed by the endpoint)")


def row(name: str, rec, split, users, extra: dict | None = None) -> dict:
    start = time.perf_counter()
    summary, _ = evaluate_rankings(rec, split, stage="test", k=10, users=users, metrics=METRICS)
    out = {"row": name, **{m: round(summary[m], 4) for m in METRICS}, "eval_users": summary["eval_users"],
           "invalid_rate": summary["invalid_rate"], "wall_seconds": round(time.perf_counter() - start, 2)}
    if isinstance(rec, LLMRecommender):
        out.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.stats().items()})
    out.update(extra or {})
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=500, help="test users evaluated (seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ml100k-path", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    ap.add_argument("--config", default=str(recipe_path("ml100k_decoder")))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "llm_ml100k"), help="decoder run, chat export, cache, server log")
    ap.add_argument("--retriever", default="bpr", help="registered recommender proposing the rerank candidates")
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--samples", type=int, default=20, help="replies per user for the sampled generate row (1 = skip it)")
    ap.add_argument("--port", type=int, default=8431, help="transformers serve's loopback port (part of the cache key)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "llm_ml100k.jsonl"))
    args = ap.parse_args()
    command = "OMP_NUM_THREADS=2 python " + shlex.join(["bench/llm_ml100k.py", *sys.argv[1:]])

    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig.load(args.config).update({"data.path": args.ml100k_path})
    split = leave_one_out(load_data(cfg.data))
    decoder = runs / "decoder"
    if not (decoder / "model" / "promptrec_config.json").exists():
        train_and_evaluate(cfg, decoder, command=command)
    chat = export_chat_model(decoder / "model", runs / "chat")
    users = sorted(np.random.default_rng(args.seed).choice(split.test["user_id"], min(args.users, len(split.test)), replace=False))

    # Fitted (or loaded) once and saved: the rerank row and the retriever's own row use the same model.
    saved = runs / f"retriever_{args.retriever}"
    t = time.perf_counter()
    if (saved / "promptrec_config.json").exists():  # fitted by an earlier run on the same split
        retriever = load_recommender(saved)
    else:
        retriever = build_recommender(args.retriever).fit(split)
        retriever.save_pretrained(saved)
    fit_s = round(time.perf_counter() - t, 1)

    rows = []
    check_port_free(args.port)
    proc, url = serve_chat_model(chat, args.port, runs / "transformers_serve.log")
    try:
        common = dict(base_url=url, model=str(chat), item_format="code", codes_from=str(decoder / "model"),
                      cache_dir=str(runs / "cache"), timeout=120, concurrency=4)
        rec = LLMRecommender(**common, template="seq-1", retriever="popularity").fit(split)
        rows.append(row("generate", rec, split, users))
        if args.samples > 1:
            rec = LLMRecommender(**common, template="seq-1", retriever="popularity", samples=args.samples,
                                 temperature=1.0).fit(split)
            rows.append(row(f"generate, {args.samples} samples at temperature 1, ranked by votes", rec, split, users))
        rec = LLMRecommender(**common, mode="rerank", template="ch-1", retriever=args.retriever,
                             candidates=args.candidates).fit(split, retriever=retriever)
        rows.append(row(f"rerank: {args.retriever} top-{args.candidates} -> decoder", rec, split, users))
        rows.append(row(f"{args.retriever} alone", retriever, split, users, {"fit_or_load_seconds": fit_s}))
    finally:
        proc.terminate()
        proc.wait(30)
    from promptrec.models.p5.model import P5Recommender

    own = P5Recommender.from_pretrained(decoder / "model")
    rows.append(row("decoder ranked by promptrec (constrained, exact)", own, split, users))

    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        for r in rows:
            f.write(json.dumps({**r, "command": command, "date": time.strftime("%Y-%m-%d")}) + "\n")
    print(json.dumps({"command": command, "results": args.results}))


if __name__ == "__main__":
    main()
