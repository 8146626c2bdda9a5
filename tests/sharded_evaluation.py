"""Launched by test_distributed.py under ``accelerate launch``: load the saved models of a run,
evaluate each sharded between the processes and alone in this process, and (rank 0) write what
both gave, with a recommendation of each loaded model, to a JSON file.

Usage: sharded_evaluation.py RUN_DIR EVENTS_CSV OUT_JSON
"""

import json
import sys
from pathlib import Path

from promptrec.core import distributed
from promptrec.core.recommender import load_recommender
from promptrec.data import leave_one_out, load_dataset
from promptrec.evaluation.ranking import evaluate_rankings

run, events, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
split = leave_one_out(load_dataset("tabular", events))
report = {"processes": distributed.world_size()}
for name, directory in (("model", run / "model"), ("sasrec", run / "compare" / "sasrec")):
    rec = load_recommender(directory)
    asked: list[str] = []  # the users this process was asked to rank
    recommend = rec.recommend

    def counted(users, recommend=recommend, asked=asked, **kw):
        asked.extend(users)
        return recommend(users, **kw)

    rec.recommend = counted
    # Batches of 7 users: several per process, and a last one shorter than the rest.
    sharded, sharded_users = evaluate_rankings(rec, split, k=20, batch_size=7)
    mine = len(asked)
    alone, alone_users = evaluate_rankings(rec, split, k=20, batch_size=7, shard=False)
    rec.recommend = recommend
    metrics = [m for m in alone if m.startswith(("HR@", "NDCG@", "MRR"))]
    report[name] = {
        "sharded": {m: sharded[m] for m in metrics},
        "alone": {m: alone[m] for m in metrics},
        "per_user_equal": bool(
            sharded_users.drop(columns="recommended").equals(alone_users.drop(columns="recommended"))
            and sharded_users["recommended"].tolist() == alone_users["recommended"].tolist()
        ),
        "eval_users": sharded["eval_users"],
        "asked": distributed.gather(mine),
        "recommendation": rec.recommend([split.test["user_id"].iloc[0]], k=3)["item_id"].tolist(),
    }
if distributed.is_main():
    out.write_text(json.dumps(report))
