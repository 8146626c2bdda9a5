"""Template search: one fitted P5 recommender, evaluated with every prompt template of a family.

A P5 model is trained on the *seen* templates of a family (``seen: true`` in the template file)
and can be asked with any of them, or with the *unseen* ones it never trained on. This module
ranks all catalogue items for the same users once per template, through the shared harness
(:func:`promptrec.evaluation.ranking.evaluate_rankings`, history excluded), and answers two questions:

- which seen template to use at prediction time: the one with the best **validation** value of
  ``select_by`` (NDCG@10 by default; ties go to the template listed first), never chosen on test;
- how well the model follows a prompt it never saw: the mean over seen templates against the
  mean over unseen ones, with a paired test on the per-user values (every template is evaluated
  on the same users, so per user the seen mean and the unseen mean can be compared directly).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ...core.recommender import STAGES, check_stage
from ...data.split import Split
from ...evaluation.metrics import DEFAULT_RANKING_METRICS, parse_metric
from ...evaluation.ranking import evaluate_rankings
from ...evaluation.significance import paired_test

SUMMARY_KEYS = ("eval_users", "k", "invalid_rate", "history_violations", "eval_seconds")


class _WithTemplate:
    """The recommender contract on top of a P5 model that always prompts with one template."""

    def __init__(self, rec: Any, template: str) -> None:
        self.rec = rec
        self.template = template

    def recommend(
        self, user_ids: Sequence[str], k: int = 10, exclude_seen: bool = True, stage: str = "test", **given: Any
    ) -> pd.DataFrame:
        return self.rec.recommend(user_ids, k=k, exclude_seen=exclude_seen, stage=stage, template=self.template, **given)


@dataclass
class TemplateSearch:
    """Per-template results of :func:`search_templates`.

    rows: one dict per template, in the template file's order: ``template``, ``seen``, ``input``
        (the prompt text) and, per evaluated stage, that stage's summary (``{"valid": {...},
        "test": {...}}``: every metric plus ``eval_users``, ``invalid_rate``, ...).
    best: the seen template with the highest validation ``select_by`` (None without "valid").
    per_user: ``(template, stage) -> DataFrame`` of per-user metric values, indexed by user_id.
    """

    family: str
    select_by: str
    metrics: tuple[str, ...]
    stages: tuple[str, ...]
    users: list[str]
    rows: list[dict[str, Any]]
    best: str | None
    per_user: dict[tuple[str, str], pd.DataFrame] = field(repr=False, default_factory=dict)

    def templates(self, seen: bool | None = None) -> list[str]:
        return [r["template"] for r in self.rows if seen is None or r["seen"] == seen]

    def table(self) -> pd.DataFrame:
        """One row per template: ``template, seen, best`` and ``{stage} {metric}`` columns."""
        out = []
        for r in self.rows:
            row = {"template": r["template"], "seen": r["seen"], "best": r["template"] == self.best}
            for stage in self.stages:
                row.update({f"{stage} {m}": r[stage][m] for m in self.metrics})
            out.append(row)
        return pd.DataFrame(out)

    def gap(self, stage: str = "test", metrics: Sequence[str] = ("HR@10", "NDCG@10"), seed: int = 0) -> dict[str, Any]:
        """Seen against unseen templates on ``stage``, per metric.

        ``seen`` / ``unseen``: the mean over templates of each template's mean (all templates
        share the users, so this is also the mean over users of each user's template average);
        ``gap = unseen - seen``; ``relative_gap = gap / seen``; ``best_seen``: the selected
        template's value; and ``paired``: :func:`promptrec.evaluation.significance.paired_test` of each
        user's unseen average against their seen average (bootstrap CI seeded by ``seed``).
        """
        if stage not in self.stages:
            raise ValueError(f"stage {stage!r} was not evaluated (evaluated: {', '.join(self.stages)})")
        seen, unseen = self.templates(seen=True), self.templates(seen=False)
        if not seen or not unseen:
            raise ValueError(f"a gap needs seen and unseen templates; family {self.family!r} has "
                             f"{len(seen)} seen and {len(unseen)} unseen")
        out: dict[str, Any] = {"stage": stage, "seen_templates": seen, "unseen_templates": unseen,
                               "users": len(self.users)}
        for m in metrics:
            a = pd.concat([self.per_user[t, stage][m] for t in unseen], axis=1).mean(axis=1)
            b = pd.concat([self.per_user[t, stage][m] for t in seen], axis=1).mean(axis=1)
            res: dict[str, Any] = {"seen": float(b.mean()), "unseen": float(a.mean())}
            res["gap"] = res["unseen"] - res["seen"]
            res["relative_gap"] = res["gap"] / res["seen"] if res["seen"] else None
            if self.best is not None:
                res["best_seen"] = float(self.per_user[self.best, stage][m].mean())
            if len(a) >= 2:
                res["paired"] = paired_test(a, b, seed=seed)
            out[m] = res
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "family": self.family,
            "select_by": f"valid {self.select_by}",
            "best": self.best,
            "stages": list(self.stages),
            "users": len(self.users),
            "templates": self.rows,
        }
        if self.templates(seen=True) and self.templates(seen=False):
            out["gap"] = {stage: self.gap(stage) for stage in self.stages}
        return out

    def format(self, metrics: Sequence[str] = ("HR@10", "NDCG@10")) -> str:
        """A markdown table, one row per template; the selected template is marked ``*``."""
        header = ["template", "seen", *(f"{s} {m}" for s in self.stages for m in metrics)]
        rows = []
        for r in self.rows:
            mark = " *" if r["template"] == self.best else ""
            rows.append([r["template"] + mark, "yes" if r["seen"] else "no",
                         *(f"{r[s][m]:.4f}" for s in self.stages for m in metrics)])
        widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            # Names left-aligned, numbers right-aligned so decimals line up.
            padded = (c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            return "| " + " | ".join(padded) + " |"

        rule = "|" + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
        text = [line(header), rule, *(line(r) for r in rows)]
        if self.best is not None:
            text.append(f"* best seen template by validation {self.select_by}: {self.best}")
        return "\n".join(text)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sample_users(split: Split, stages: Sequence[str], n: int | None, seed: int) -> list[str]:
    """The users with a target in every stage of ``stages``, in test-table order; with ``n``,
    a seeded sample of ``n`` of them (same users for every template and stage)."""
    users = list(split.targets(stages[0])["user_id"])
    for stage in stages[1:]:
        have = set(split.targets(stage)["user_id"])
        users = [u for u in users if u in have]
    if n and len(users) > n:
        keep = set(np.random.default_rng(seed).choice(users, n, replace=False).tolist())
        users = [u for u in users if u in keep]
    return users


def search_templates(
    rec: Any,
    split: Split,
    family: str = "sequential",
    stages: Sequence[str] = STAGES,
    users: int | Sequence[str] | None = None,
    k: int | None = None,
    select_by: str = "NDCG@10",
    metrics: Sequence[str] = DEFAULT_RANKING_METRICS,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
) -> TemplateSearch:
    """Evaluate ``rec`` with each template of ``family`` (seen and unseen) on ``stages``.

    rec: a fitted P5 recommender, or anything with ``templates`` (a TemplateSet) and
        ``recommend(user_ids, k, exclude_seen, stage, template=...)``.
    users: all users with a target in every stage (None or 0), ``n`` of them drawn with ``seed``,
        or an explicit list; the same users for every template and stage.
    k: length of the ranked list asked for (the beam width of a generative model); default the
        largest cutoff of ``rec.config.eval.ks`` (as in ``rec.evaluate``), else 20. Metrics whose
        cutoff exceeds ``k`` are left out.
    select_by: the validation metric that picks the best seen template (needs "valid" in stages).
    """
    for stage in stages:
        check_stage(stage)
    stages = tuple(dict.fromkeys(stages))
    if not stages:
        raise ValueError("no stage to evaluate")
    if k is None:
        config = getattr(rec, "config", None)
        k = max(config.eval.ks) if config is not None else 20
    metrics = tuple(m for m in metrics if (parse_metric(m).k or 0) <= k)
    if select_by not in metrics:
        raise ValueError(f"select_by {select_by!r} must be one of the metrics {metrics}")
    if users is None or isinstance(users, (int, np.integer)):
        user_ids = sample_users(split, stages, int(users or 0), seed)
    else:
        user_ids = [str(u) for u in users]
    templates = rec.templates.family(family, seen=None)

    rows: list[dict[str, Any]] = []
    per_user: dict[tuple[str, str], pd.DataFrame] = {}
    for tmpl in templates:
        row: dict[str, Any] = {"template": tmpl.id, "seen": tmpl.seen, "input": tmpl.input}
        for stage in stages:
            summary, table = evaluate_rankings(
                _WithTemplate(rec, tmpl.id), split, stage=stage, k=k, users=user_ids,
                batch_size=batch_size, metrics=metrics, progress=progress,
            )
            row[stage] = {key: summary[key] for key in (*metrics, *SUMMARY_KEYS)}
            per_user[tmpl.id, stage] = table.set_index("user_id")[list(metrics)]
        rows.append(row)

    best = None
    if "valid" in stages:
        seen = [r for r in rows if r["seen"]]
        if seen:
            # max() keeps the first of equal values: ties go to the template listed first.
            best = max(seen, key=lambda r: r["valid"][select_by])["template"]
    return TemplateSearch(family, select_by, metrics, stages, user_ids, rows, best, per_user)


__all__ = ["TemplateSearch", "sample_users", "search_templates"]
