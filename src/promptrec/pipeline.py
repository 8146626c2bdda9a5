"""The main job: load data, split, train, evaluate against popularity, save. The CLI, the
quickstart and the benchmark scripts all call these functions.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .baselines.popularity import MostPopular
from .beyond import beyond_summary, default_user_groups, train_item_counts
from .config import DataConfig, RunConfig
from .data import InteractionData, Split, leave_one_out, load_dataset
from .evaluation import evaluate_rankings, format_table, recommended_items

log = logging.getLogger("promptrec")

SUMMARY_KEYS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")


def load_data(cfg: DataConfig) -> InteractionData:
    """Load the configured dataset; MovieLens-100K without a path is fetched into the cache."""
    path = cfg.path
    if cfg.loader == "ml-100k" and not path:
        from .data.download import get_ml100k

        path = str(get_ml100k())
    return load_dataset(cfg.loader, path, **cfg.options)


def _clean(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "per_user"}


def evaluate_popularity(split: Split, stage: str = "test", k: int = 20, users=None) -> tuple[dict, pd.DataFrame]:
    t0 = time.perf_counter()
    pop = MostPopular().fit(split)
    train_seconds = time.perf_counter() - t0
    summary, per_user = evaluate_rankings(pop, split, stage=stage, k=k, users=users)
    summary["train_seconds"] = train_seconds
    return summary, per_user


def write_run(
    output: str | Path,
    split: Split,
    results: dict[str, tuple[dict[str, Any], pd.DataFrame]],
    **info: Any,
) -> dict[str, Any]:
    """Write the evaluation part of a run directory, the layout ``promptrec compare`` reads.

    ``results`` maps an entry name (``"model"``, ``"popularity"``) to its ``(summary, per_user)``
    from :func:`~promptrec.evaluation.evaluate_rankings`. Writes ``per_user_{name}.parquet``
    (metrics per user), ``recommendations_{name}.parquet`` (the lists, long form ``user_id,
    item_id, rank``, when ``per_user`` has its ``recommended`` column), ``item_popularity.parquet`` (training interactions per catalogue item) and
    ``metrics.json``: ``{name: summary, ..., **info}``, which it returns.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for name, (_, per_user) in results.items():
        per_user.drop(columns="recommended", errors="ignore").to_parquet(out / f"per_user_{name}.parquet", index=False)
        if "recommended" in per_user:
            recommended_items(per_user).to_parquet(out / f"recommendations_{name}.parquet", index=False)
    train_item_counts(split).reset_index().to_parquet(out / "item_popularity.parquet", index=False)
    metrics = {**{name: summary for name, (summary, _) in results.items()}, **info}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics


def train_and_evaluate(
    config: RunConfig,
    output: str | Path,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Train a P5 recommender per ``config``, save it to ``output/model``, evaluate it and the
    popularity ranking on the test split (beyond-accuracy metrics included), and write the run
    directory with :func:`write_run`: ``output/metrics.json`` is
    ``{"model": {...}, "popularity": {...}, "data": ..., "config": ..., "command": ...}``.
    """
    from .model import P5Recommender

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(_yaml(config.to_dict()))
    t0 = time.perf_counter()
    data = load_data(config.data)
    split = leave_one_out(data)
    log.info("data: %s", data.summary())
    if progress:
        s = data.summary()
        print(f"data: {s['name']}: {s['users']} users, {s['items']} items, {s['interactions']} interactions", flush=True)
    rec = P5Recommender(config)
    rec.fit(split, output_dir=out, resume=resume, progress=progress)
    rec.save_pretrained(out / "model")
    return evaluate_and_write(rec, split, out, command=command, progress=progress, started=t0)


def evaluate_run(run_dir: str | Path, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Evaluate the trained model in ``run_dir/model`` (on the data named in its config) and
    rewrite the run's evaluation files, e.g. after an interrupted evaluation."""
    from .model import P5Recommender

    t0 = time.perf_counter()
    rec = P5Recommender.from_pretrained(Path(run_dir) / "model")
    split = leave_one_out(load_data(rec.config.data))
    return evaluate_and_write(rec, split, Path(run_dir), command=command, progress=progress, started=t0)


def evaluate_and_write(
    rec, split: Split, out: Path, command: str | None = None, progress: bool = True, started: float | None = None
) -> dict[str, Any]:
    """Test-split evaluation of ``rec`` and of popularity on the same users (accuracy and
    beyond-accuracy), written as a run directory (:func:`write_run`) and printed."""
    config = rec.config
    t0 = started if started is not None else time.perf_counter()
    result = rec.evaluate(split, stage="test", progress=progress)
    result.update(rec.fit_info)
    per_user = result["per_user"]
    pop, pop_users = evaluate_popularity(split, "test", k=max(config.eval.ks), users=list(per_user["user_id"]))
    # Both entries through the same beyond-accuracy code, at the same cutoffs and groups.
    groups = default_user_groups(split.data.users)
    for summary, users_table in ((result, per_user), (pop, pop_users)):
        summary.update(
            beyond_summary(recommended_items(users_table), split, users_table, config.eval.ks, groups)
        )
    metrics = write_run(
        out,
        split,
        {"model": (_clean(result), per_user), "popularity": (pop, pop_users)},
        data=split.data.summary(),
        config=config.to_dict(),
        command=command or " ".join(shlex.quote(a) for a in sys.argv),
        total_seconds=round(time.perf_counter() - t0, 2),
    )
    if progress:
        print(format_table({"model": metrics["model"], "popularity": pop}, SUMMARY_KEYS))
        print(
            f"invalid outputs: {metrics['model']['invalid_rate']:.4f} with the trie constraint, "
            f"{metrics['model'].get('unconstrained_invalid_rate', float('nan')):.4f} without it; "
            f"{metrics['model']['eval_users']} users, history excluded; "
            f"train {metrics['model']['train_seconds']:.0f}s, eval {metrics['model']['eval_seconds']:.0f}s"
        )
        print(f"model saved to {out / 'model'}; metrics in {out / 'metrics.json'}")
    return metrics


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


# Sized for about five minutes of training on 2 CPU cores: the schedule (warm-up, cosine decay)
# is planned over the epochs that fit in that time, so the time limit only guards slow machines.
QUICKSTART = {
    "data": {"loader": "ml-100k"},
    "index": {"method": "collaborative"},
    "model": {"preset": "mini", "max_history": 10},
    "train": {
        "epochs": 2, "batch_size": 128, "lr": 3e-3, "warmup_ratio": 0.02,
        "time_limit": 330, "val_users": 500, "patience": 2,
    },
    "eval": {"unconstrained_users": 200},
}


def quickstart_config() -> RunConfig:
    return RunConfig.model_validate(QUICKSTART)
