"""MovieLens-100K like prediction in the TALLRec protocol: test AUC per model and shot count.

Examples (:mod:`promptrec.evaluation.ctr`): every rating with the user's 10 ratings before it as history
(liked = rating > 3), the label "rating > 3"; split by the target's time, 80 % / 10 % / 10 % of
the rating times, so every training target precedes every validation and test target. Few-shot
rows train on ``--shots`` examples drawn from the training examples with each seed of
``--seeds`` (the seed also seeds the model) and report the mean and standard deviation of the
test AUC over seeds; ``--shots 0`` trains on the whole training set.

One command per row; each prints JSON and writes ``bench/results/ctr_ml100k_<row>.json``:

    OMP_NUM_THREADS=1 python bench/ml100k_ctr.py --model logreg --shots 16
    OMP_NUM_THREADS=1 python bench/ml100k_ctr.py --model biased_mf --shots 0
    python bench/ml100k_ctr.py --model cross_encoder --tuning lora --shots 64
    python bench/ml100k_ctr.py --model cross_encoder --tuning full --shots 0 --max-train 20000

The cross-encoder (:mod:`promptrec.models.cross_encoder`) is all-MiniLM-L6-v2 unless ``--pretrained``
names another local directory. It chooses its weights by validation AUC on 1,000 seeded
validation examples (``--max-valid``). On a CPU, ``--max-train`` and ``--max-test`` subsample the
training and test examples (seeded); the JSON records both.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from promptrec import __version__
from promptrec.data import InteractionData, Split
from promptrec.evaluation.ctr import CTRConfig, CTRSplit, LogisticCTR, build_ctr_examples, ctr_auc, sample_shots
from promptrec.core.config import DataConfig
from promptrec.pipeline import load_data

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("cross_encoder", "logreg", "biased_mf")
# TALLRec (LLaMA-7B + LoRA), movie AUC at 16 / 64 / 256 shots, from the paper's few-shot table.
TALLREC_MOVIE_AUC = {16: 0.6724, 64: 0.6748, 256: 0.7198}


def row_name(args: argparse.Namespace) -> str:
    parts = [args.model]
    if args.model == "cross_encoder":
        parts.append(args.tuning if args.head == "binary" else f"{args.tuning}_{args.head}")
    parts.append(str(args.shots) if args.shots else "full")
    return "_".join(parts)


def subsample(rows: pd.DataFrame, limit: int, seed: int = 0) -> pd.DataFrame:
    return sample_shots(rows, limit, seed) if limit and len(rows) > limit else rows


# -- one seed of each model ---------------------------------------------------------------------
def run_logreg(train: pd.DataFrame, ctr: CTRSplit, data: InteractionData, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    model = LogisticCTR(seed=seed).fit(train, data.items)
    seconds = time.perf_counter() - start
    return {
        "AUC": ctr_auc(model.predict(ctr.test), ctr.test),
        "train_seconds": round(seconds, 3),
        "trainable_parameters": len(LogisticCTR.FEATURES) + 1,
        "coefficients": model.coefficients(),
    }


def run_biased_mf(train: pd.DataFrame, ctr: CTRSplit, data: InteractionData, seed: int) -> dict[str, Any]:
    """Biased MF fitted on the training examples' ratings (early stopping on validation RMSE);
    a test example is scored by the predicted rating of its (user, item)."""
    from promptrec.core.recommender import build_recommender

    columns = ["user_id", "item_id", "timestamp", "rating"]
    split = Split(data=data, train=train[columns], valid=ctr.valid[columns], test=ctr.test[columns])
    start = time.perf_counter()
    model = build_recommender("biased_mf", seed=seed, device="cpu", progress=False, reg=0.13).fit(split)
    seconds = time.perf_counter() - start
    scores = model.predict_rating(ctr.test["user_id"], ctr.test["item_id"])
    return {
        "AUC": ctr_auc(scores, ctr.test),
        "train_seconds": round(seconds, 3),
        "trainable_parameters": sum(p.numel() for p in model.net_.parameters()),
        "fit": model.fit_info_,
    }


def run_cross_encoder(
    train: pd.DataFrame, ctr: CTRSplit, data: InteractionData, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    from promptrec.models.cross_encoder import CrossEncoderRecommender

    model = CrossEncoderRecommender(
        pretrained=args.pretrained,
        head=args.head,
        tuning={"method": args.tuning, "r": args.lora_r, "alpha": 2 * args.lora_r},
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
        min_steps=args.min_steps,
        evals=args.evals,
        max_valid=args.max_valid,
        seed=seed,
        device=args.device,
        progress=args.progress,
    )
    model.fit_examples(train, data.items, valid=ctr.valid)
    start = time.perf_counter()
    scores = model.predict_examples(ctr.test)
    info = model.fit_info_
    return {
        "AUC": ctr_auc(scores, ctr.test),
        "train_seconds": info["fit_seconds"],
        "test_seconds": round(time.perf_counter() - start, 2),
        "trainable_parameters": info["trainable_parameters"],
        "total_parameters": info["total_parameters"],
        "fit": info,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=MODELS, required=True)
    ap.add_argument("--shots", type=int, default=0, help="training examples to sample; 0 = all")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 with --shots, else 0")
    ap.add_argument("--path", default=None, help="ml-100k directory (default: the cached copy)")
    ap.add_argument("--max-train", type=int, default=0, help="subsample the full training set (0 = all)")
    ap.add_argument("--max-test", type=int, default=0, help="subsample the test examples (0 = all)")
    ap.add_argument("--results", default=None, help="default: bench/results/ctr_ml100k_<row>.json")
    lm = ap.add_argument_group("cross_encoder")
    lm.add_argument("--pretrained", default=None, help="local encoder directory (default: bundled MiniLM)")
    lm.add_argument("--tuning", default="lora", choices=("full", "lora", "prompt", "prefix", "ia3"))
    lm.add_argument("--head", default="binary", choices=("binary", "rating"))
    lm.add_argument("--lora-r", type=int, default=8)
    lm.add_argument("--lr", type=float, default=None, help="default: 5e-5 full, 1e-3 peft")
    lm.add_argument("--batch-size", type=int, default=16)
    lm.add_argument("--epochs", type=int, default=1)
    lm.add_argument("--min-steps", type=int, default=200, help="at least this many steps (few-shot)")
    lm.add_argument("--evals", type=int, default=10, help="validation AUC checks; the best weights are kept")
    lm.add_argument("--max-valid", type=int, default=1000)
    lm.add_argument("--device", default="auto")
    lm.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    seeds = args.seeds if args.seeds is not None else ([0, 1, 2] if args.shots else [0])
    if args.device in ("auto", "cpu") and not torch.cuda.is_available():
        torch.set_num_threads(1)  # CPU numbers below are single-thread
    row = row_name(args)

    data = load_data(DataConfig(loader="ml-100k", path=args.path))
    ctr = build_ctr_examples(data, CTRConfig())
    summary = ctr.summary()
    if args.max_test:
        ctr.test = subsample(ctr.test, args.max_test)
    runs = []
    for seed in seeds:
        train = sample_shots(ctr.train, args.shots, seed) if args.shots else subsample(ctr.train, args.max_train, seed)
        if args.model == "logreg":
            result = run_logreg(train, ctr, data, seed)
        elif args.model == "biased_mf":
            result = run_biased_mf(train, ctr, data, seed)
        else:
            result = run_cross_encoder(train, ctr, data, seed, args)
        runs.append({"seed": seed, "train_examples": len(train), **result})
        print(json.dumps({"row": row, "seed": seed, "AUC": round(result["AUC"], 4)}), flush=True)

    aucs = np.array([r["AUC"] for r in runs])
    report = {
        "row": row,
        "model": args.model,
        "tuning": args.tuning if args.model == "cross_encoder" else None,
        "head": args.head if args.model == "cross_encoder" else None,
        "shots": args.shots or "full",
        "train_examples": runs[0]["train_examples"],
        "test_examples": len(ctr.test),
        "seeds": seeds,
        "AUC_mean": round(float(aucs.mean()), 4),
        "AUC_std": round(float(aucs.std(ddof=1)), 4) if len(aucs) > 1 else 0.0,
        "trainable_parameters": runs[0]["trainable_parameters"],
        "train_seconds_mean": round(float(np.mean([r["train_seconds"] for r in runs])), 2),
        "tallrec_llama7b_lora_AUC": TALLREC_MOVIE_AUC.get(args.shots),
        "runs": runs,
        "examples": summary,
        "ctr_config": CTRConfig().model_dump(),
        "args": vars(args),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "promptrec_version": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    path = Path(args.results or ROOT / "bench" / "results" / f"ctr_ml100k_{row}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    keys = ("row", "AUC_mean", "AUC_std", "shots", "train_examples", "test_examples", "trainable_parameters", "train_seconds_mean")
    print(json.dumps({k: report[k] for k in keys}))


if __name__ == "__main__":
    main()
