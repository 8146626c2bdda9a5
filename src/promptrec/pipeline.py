"""The main job: load data, split, train any registered recommender and the models it is
compared with, evaluate them on the same users, save. The CLI, the quickstart and the benchmark
scripts all call these functions.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from pydantic import Field, model_validator

from .core import distributed
from .core.recommender import Recommender, build_recommender, load_recommender
from .data import InteractionData, Split, leave_one_out, load_dataset
from .evaluation.beyond import beyond_summary, default_user_groups, train_item_counts
from .evaluation.ranking import evaluate_recommender, format_table, recommended_items, sample_users
from .core.config import DataConfig, FileConfig, _Strict
from .models.p5.config import RunConfig

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


def write_run(
    output: str | Path,
    split: Split,
    results: dict[str, tuple[dict[str, Any], pd.DataFrame]],
    **info: Any,
) -> dict[str, Any]:
    """Write the evaluation part of a run directory, the layout ``promptrec compare`` reads.

    ``results`` maps an entry name (``"model"``, ``"popularity"``) to its ``(summary, per_user)``
    from :func:`~promptrec.evaluation.ranking.evaluate_rankings`. Writes ``per_user_{name}.parquet``
    (metrics per user), ``recommendations_{name}.parquet`` (the lists, long form ``user_id,
    item_id, rank``, when ``per_user`` has its ``recommended`` column), ``item_popularity.parquet`` (training interactions per catalogue item) and
    ``metrics.json``: ``{name: summary, ..., **info}``, which it returns. Launched as several
    processes, only rank 0 writes; every process returns the metrics.
    """
    metrics = {**{name: summary for name, (summary, _) in results.items()}, **info}
    if not distributed.is_main():
        return metrics
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for name, (_, per_user) in results.items():
        per_user.drop(columns="recommended", errors="ignore").to_parquet(out / f"per_user_{name}.parquet", index=False)
        if "recommended" in per_user:
            recommended_items(per_user).to_parquet(out / f"recommendations_{name}.parquet", index=False)
    train_item_counts(split).reset_index().to_parquet(out / "item_popularity.parquet", index=False)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics


class CompareEntry(_Strict):
    """A model trained and evaluated beside the job's own, on the same split and users."""

    recommender: str = Field(description="registered recommender name")
    params: dict[str, Any] = Field(default_factory=dict, description="its constructor parameters")
    label: str | None = Field(None, description="its name in the table and run directory (default: the recommender)")

    @property
    def key(self) -> str:
        return self.label or self.recommender


class EvaluationConfig(_Strict):
    ks: tuple[int, ...] = Field((5, 10, 20), description="cutoffs of HR@K / NDCG@K")
    users: int = Field(0, ge=0, description="evaluate a seeded sample of this many test users (0 = all)")
    seed: int = Field(0, description="seed of the user sample")


class JobConfig(FileConfig):
    """A training job for any registered recommender: what ``promptrec train`` runs.

    A prompt-LM run config (sections ``data``, ``index``, ``model``, ``tasks``, ``train``,
    ``eval`` at the top) is read as a job of the ``p5`` recommender with those sections as its
    parameters, so every such file works as it is.
    """

    recommender: str = Field("p5", description="registered recommender name (promptrec train --help lists them)")
    data: DataConfig = Field(default_factory=DataConfig)
    params: dict[str, Any] = Field(default_factory=dict, description="constructor parameters of the recommender")
    compare: list[CompareEntry] = Field(
        default_factory=lambda: [CompareEntry(recommender="popularity")],
        description="models trained and evaluated beside it on the same users",
    )
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="before")
    @classmethod
    def _run_config_layout(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and not ({"recommender", "params"} & set(raw)) and set(raw) & RUN_SECTIONS:
            # Evaluated as the run config says: its cutoffs, its user sample drawn with its seed.
            run_eval, train = raw.get("eval") or {}, raw.get("train") or {}
            evaluation = {"ks": run_eval.get("ks", (5, 10, 20)), "users": run_eval.get("users", 0), "seed": train.get("seed", 0)}
            return {"recommender": "p5", "data": raw.get("data", {}), "params": raw, "evaluation": evaluation}
        return raw

    def update(self, overrides: dict[str, Any]) -> "JobConfig":
        """Dotted overrides: ``data.*``, ``evaluation.*``, ``recommender`` and ``compare`` are the
        job's; every other key is a parameter of the recommender (``--set epochs=50``,
        ``--set train.lr=1e-3`` for a prompt LM's run config)."""
        own = {k: v for k, v in overrides.items() if k.split(".")[0] in JOB_KEYS}
        params = dict(self.params)
        for key, value in overrides.items():
            if key.split(".")[0] in JOB_KEYS:
                continue
            node = params
            *parents, leaf = key.split(".")
            for p in parents:
                node[p] = dict(node.get(p) or {})
                node = node[p]
            node[leaf] = value
        if set(params) & RUN_SECTIONS:
            # A run config's own evaluation keys keep steering the job's evaluation, as on load.
            for key, field in (("eval.users", "users"), ("eval.ks", "ks"), ("train.seed", "seed")):
                if key in overrides:
                    own.setdefault(f"evaluation.{field}", overrides[key])
        job = super().update(own) if own else self
        if "data" in params:  # a run config names its dataset too: keep it the job's
            params["data"] = job.data.model_dump(mode="json")
        return job.model_copy(update={"params": params})


JOB_KEYS = frozenset({"recommender", "data", "params", "compare", "evaluation"})
RUN_SECTIONS = frozenset({"index", "model", "tasks", "train", "eval"})


def run_job(
    job: JobConfig,
    output: str | Path,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train ``job.recommender`` on a leave-one-out split of ``job.data``, save it to
    ``output/model``, train the ``compare`` models (saved under ``output/compare/``), evaluate all
    of them on the same test users, and write the run directory (:func:`write_run`).

    Under ``accelerate launch -m promptrec.cli train ...`` every process runs the job: the models
    that train data-parallel (the prompt LMs, SASRec, BPR, biased MF) share their training, the
    others are fitted by each process alike, the evaluation is sharded, and only rank 0 writes
    the run directory and prints."""
    # Every model is built (its parameters checked) before the data is loaded.
    out = Path(output)
    entries = [
        ("model", build_recommender(job.recommender, job.params), out / "model", out),
        *((c.key, build_recommender(c.recommender, c.params), out / "compare" / c.key, out / "compare" / f"{c.key}.run")
          for c in job.compare),
    ]
    keys = [key for key, *_ in entries]
    if len(set(keys)) < len(keys):
        raise ValueError(f"two entries share a name in {keys}: give compare entries a label")
    main = distributed.is_main()
    progress = progress and main
    config_file = out / "config.yaml"
    # A resume keeps the run's config until its fits have gone on: one the checkpoint refuses (other
    # parameters, a checkpoint without what the resume needs) must leave the directory as the run left it.
    deferred = resume and config_file.exists()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if not deferred:
            config_file.write_text(_yaml(job.to_dict()))
    started = time.perf_counter()
    data = load_data(job.data)
    split = leave_one_out(data)
    if main:
        log.info("data: %s", data.summary())
    if progress:
        s = data.summary()
        print(f"data: {s['name']}: {s['users']} users, {s['items']} items, {s['interactions']} interactions", flush=True)
    models: dict[str, Recommender] = {}
    # The job's own model keeps its checkpoints in the run directory itself (out/checkpoint).
    for key, rec, directory, checkpoints in entries:
        rec.progress = progress
        if progress:
            print(f"training {key} ({rec.name})", flush=True)
        t0 = time.perf_counter()
        rec.fit_with_checkpoints(split, checkpoints, resume=resume)
        rec.fit_info_ = {**rec.fit_info_, "fit_wall_seconds": round(time.perf_counter() - t0, 2), "data": job.data.model_dump(mode="json")}
        if main:
            rec.save_pretrained(directory)
        models[key] = rec
    if main and deferred:
        config_file.write_text(_yaml(job.to_dict()))
    return evaluate_and_write(
        models, split, out, job.evaluation, command=command, progress=progress, started=started, config=job.to_dict()
    )


def evaluate_and_write(
    models: dict[str, Recommender],
    split: Split,
    out: Path,
    evaluation: EvaluationConfig | None = None,
    command: str | None = None,
    progress: bool = True,
    started: float | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Test-split evaluation of every model on the same users (accuracy, beyond-accuracy and
    each model's own extra metrics), written as a run directory (:func:`write_run`) and printed."""
    evaluation = evaluation or EvaluationConfig()
    progress = progress and distributed.is_main()
    t0 = started if started is not None else time.perf_counter()
    users = sample_users(split, "test", evaluation.users, evaluation.seed)
    groups = default_user_groups(split.data.users)
    results = {}
    for key, rec in models.items():
        summary, per_user = evaluate_recommender(rec, split, "test", k=max(evaluation.ks), users=users, progress=progress)
        summary.update(beyond_summary(recommended_items(per_user), split, per_user, evaluation.ks, groups))
        summary.update({k: v for k, v in rec.fit_info_.items() if k != "data"})
        summary["recommender"] = rec.name
        results[key] = (summary, per_user)
    metrics = write_run(
        out,
        split,
        results,
        data=split.data.summary(),
        config=config,
        command=command or " ".join(shlex.quote(a) for a in sys.argv),
        total_seconds=round(time.perf_counter() - t0, 2),
    )
    if progress:
        print(format_table({key: metrics[key] for key in results}, SUMMARY_KEYS))
        for key in results:
            m = metrics[key]
            seconds = m.get("fit_wall_seconds")
            line = f"{key}: {m['eval_users']} users, history excluded, invalid outputs {m['invalid_rate']:.4f}"
            if "unconstrained_invalid_rate" in m:
                line += f" ({m['unconstrained_invalid_rate']:.4f} without the decoding constraint)"
            if seconds is not None:
                line += f"; fit {seconds:.0f}s"
            print(line + f", eval {m['eval_seconds']:.0f}s")
        print(f"model saved to {out / 'model'}; metrics in {out / 'metrics.json'}")
    return metrics


def evaluate_saved(
    model_dir: str | Path,
    data: DataConfig | None = None,
    stage: str = "test",
    users: int = 0,
    seed: int = 0,
    compare: Sequence[str] = ("popularity",),
    progress: bool = True,
) -> dict[str, tuple[dict[str, Any], pd.DataFrame]]:
    """Evaluate a saved model directory (any recommender) and freshly fitted ``compare`` models on
    the same ``stage`` users of its dataset (``data``, else the one it was trained on)."""
    rec = load_recommender(model_dir)
    rec.progress = progress
    if data is None:
        named = rec.fit_info_.get("data")
        if named is None:
            raise ValueError(f"{model_dir} does not name the data it was trained on: give --loader and --data")
        data = DataConfig.model_validate(named)
    split = leave_one_out(load_data(data))
    chosen = sample_users(split, stage, users, seed)
    results = {"model": evaluate_recommender(rec, split, stage, users=chosen, progress=progress)}
    for name in compare:
        other = build_recommender(name).fit(split)
        results[name] = evaluate_recommender(other, split, stage, users=chosen)
    return results


def train_and_evaluate(
    config: RunConfig,
    output: str | Path,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """:func:`run_job` for a prompt-LM run config: the P5 recommender beside popularity,
    evaluated on ``config.eval.users`` test users (0 = all) sampled with ``config.train.seed``."""
    job = JobConfig(
        recommender="p5",
        data=config.data,
        params=config.to_dict(),
        evaluation=EvaluationConfig(ks=config.eval.ks, users=config.eval.users, seed=config.train.seed),
    )
    return run_job(job, output, resume=resume, progress=progress, command=command)


def evaluate_run(run_dir: str | Path, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Evaluate the models of ``run_dir`` again (on the data and users its config names) and
    rewrite the run's evaluation files, e.g. after an interrupted evaluation."""
    run = Path(run_dir)
    job = JobConfig.load(run / "config.yaml")
    models = {"model": load_recommender(run / "model")}
    models.update({c.key: load_recommender(run / "compare" / c.key) for c in job.compare})
    split = leave_one_out(load_data(job.data))
    return evaluate_and_write(models, split, run, job.evaluation, command=command, progress=progress, config=job.to_dict())


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def quickstart_config() -> RunConfig:
    """The T5 P5 recipe on MovieLens-100K (``recipes/t5_p5.yaml``), sized for about five
    minutes of training on 2 CPU cores."""
    return RunConfig.load("t5_p5")


def quickstart_job() -> JobConfig:
    """The main job (``recipes/quickstart.yaml``): the best sequence LM and SASRec on
    MovieLens-100K beside popularity."""
    return JobConfig.load("quickstart")
