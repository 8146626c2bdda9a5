"""What one Gemma 3 270M reply costs without a server: ``model.generate`` on one thread, on the
exact messages the ``llm`` bench sends (``chat-rerank-5``, 0- and 1-shot, first sampled user,
validation item), rendered by the same transcript chat template. Compared with the bench's
seconds per request, it tells what the server adds.

    OMP_NUM_THREADS=1 python bench/llm_gemma_generate_time.py
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from llm_gemma_ml100k import sampled_candidates  # bench/ is on sys.path when a script here runs
from promptrec.core.config import DataConfig
from promptrec.core.recommender import build_recommender
from promptrec.data import leave_one_out
from promptrec.models.llm import LLMRecommender
from promptrec.pipeline import load_data
from promptrec.pretrained import get_model
from promptrec.pretrained.chat import TRANSCRIPT_TEMPLATE


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    split = leave_one_out(load_data(DataConfig(loader="ml-100k")))
    users = sorted(map(str, np.random.default_rng(0).choice(split.test["user_id"], 10, replace=False)))
    cands = sampled_candidates(split, users, "valid", 20, 0)
    path = get_model("gemma-3-270m")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    popularity = build_recommender("popularity").fit(split)
    u, out = users[0], {}
    for shots in (0, 1):
        rec = LLMRecommender("http://unused/v1", "m", mode="rerank", template="chat-rerank-5", separator=" ", shots=shots,
                             max_history=10, candidate_order="shuffled", cache_dir=None).fit(split, retriever=popularity)
        c = list(popularity.recommend([u], k=20, stage="valid", candidates=cands)["item_id"])
        c = [c[j] for j in rec._demo_rng(u, salt=1).permutation(len(c))]  # as recommend() shuffles
        question, _ = rec._render(u, rec.current_history(u, "valid"), 10, c)
        messages = [*rec._demos(u, 10), {"role": "user", "content": question}, *rec._opening()]
        ids = tok.apply_chat_template(messages, chat_template=TRANSCRIPT_TEMPLATE, tokenize=True, return_tensors="pt",
                                      return_dict=True)
        with torch.inference_mode():
            t = time.perf_counter()
            model.generate(**ids, max_new_tokens=1, do_sample=False)
            first = time.perf_counter() - t
            t = time.perf_counter()
            g = model.generate(**ids, max_new_tokens=10, min_new_tokens=10, do_sample=False)
            full = time.perf_counter() - t
        n = ids["input_ids"].shape[1]
        out[f"{shots}-shot"] = {"prompt_tokens": n, "prefill_and_1_token_seconds": round(first, 2),
                                "10_tokens_seconds": round(full, 2), "reply": tok.decode(g[0, n:])}
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out["command"] = "OMP_NUM_THREADS=1 python bench/llm_gemma_generate_time.py"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
