"""Two runs of ``ml100k_cold_start.py`` on the same cold-item split, compared user by user.

    python bench/cold_start_paired.py bench/results/cold_start_ml100k_minilm_s0.json \
        bench/results/cold_start_ml100k_gemma_s0.json --names minilm gemma

For every model row both runs report (``p5``, ``p5 + cold by prefix ...``, ``popularity``), on
the cold users of each stage (and the warm ones): HR@10 and NDCG@10 of each run, the exact
random expectation on the same users, hits, and a paired test of the per-user NDCG@10 and HR@10
(run A minus run B; t-test, Wilcoxon, bootstrap interval:
:func:`promptrec.evaluation.significance.paired_test`). The runs must share the split (same cold
users); typically they differ in one setting, such as the item-text encoder.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import pandas as pd

from promptrec.evaluation.significance import paired_test

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("HR@10", "NDCG@10")


def per_user(run: dict, stage: str, model: str) -> pd.DataFrame:
    rows = run["per_user"][stage][model]
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(run["per_user_columns"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--names", nargs=2, default=("a", "b"), help="labels of the two runs")
    ap.add_argument("--results", default=None, help="write the comparison here (JSON)")
    args = ap.parse_args()
    a, b = (json.loads(Path(p).read_text()) for p in (args.run_a, args.run_b))
    if a["split"] != b["split"] or a["cold_users"] != b["cold_users"]:
        sys.exit("the two runs are not on the same cold-item split")
    na, nb = args.names
    out = {"command": "python " + shlex.join(["bench/cold_start_paired.py", *sys.argv[1:]]),
           "runs": {na: args.run_a, nb: args.run_b}, "stages": {}}
    for stage in ("test", "valid"):
        cold = set(a["cold_users"][stage])
        random = per_user(a, stage, "random")
        models = [m for m in a["per_user"][stage] if m in b["per_user"][stage] and m != "random"]
        table = {}
        for group in ("cold", "warm"):
            users = sorted(u for u in random.index if (u in cold) == (group == "cold"))
            rows = {}
            for model in models:
                pa, pb = per_user(a, stage, model).loc[users], per_user(b, stage, model).loc[users]
                rows[model] = {
                    **{f"{na} {c}": round(float(pa[c].mean()), 4) for c in COLUMNS},
                    **{f"{nb} {c}": round(float(pb[c].mean()), 4) for c in COLUMNS},
                    f"{na} hits@10": int(pa["HR@10"].sum()), f"{nb} hits@10": int(pb["HR@10"].sum()),
                    **{f"paired {c}": {k: (round(v, 5) if isinstance(v, float) else v)
                                       for k, v in paired_test(pa[c], pb[c]).items()} for c in COLUMNS},
                }
            rows["random (exact)"] = {c: round(float(random.loc[users, c].mean()), 4) for c in COLUMNS}
            rows["random (exact)"]["expected hits@10"] = round(float(random.loc[users, "HR@10"].sum()), 2)
            table[group] = {"users": len(users), "models": rows}
        out["stages"][stage] = table
    text = json.dumps(out, indent=2)
    if args.results:
        Path(args.results).write_text(text)
    for stage, table in out["stages"].items():
        g = table["cold"]
        print(f"\n{stage}, cold users ({g['users']}):")
        print(f"| model | {na} HR@10 | {na} NDCG@10 | {nb} HR@10 | {nb} NDCG@10 | hits {na}/{nb} | "
              f"NDCG@10 diff [95% CI] | Wilcoxon p |")
        print("|---|---|---|---|---|---|---|---|")
        for model, r in g["models"].items():
            if model == "random (exact)":
                print(f"| random (exact) | {r['HR@10']:.4f} | {r['NDCG@10']:.4f} | {r['HR@10']:.4f} | "
                      f"{r['NDCG@10']:.4f} | {r['expected hits@10']} expected | | |")
                continue
            p = r["paired NDCG@10"]
            print(f"| {model} | {r[f'{na} HR@10']:.4f} | {r[f'{na} NDCG@10']:.4f} | {r[f'{nb} HR@10']:.4f} | "
                  f"{r[f'{nb} NDCG@10']:.4f} | {r[f'{na} hits@10']}/{r[f'{nb} hits@10']} | "
                  f"{p['mean_diff']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}] | {p['wilcoxon_pvalue']:.3f} |")


if __name__ == "__main__":
    main()
