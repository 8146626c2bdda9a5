"""Outputs of a simulation: all runs' rounds in one JSONL, metric-against-round plots (one line per
recommender x update x intervention, the mean over seeds, shaded between the seeds' min and max)
and a markdown summary (first and last round, mean +- standard deviation over seeds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .config import SimulationConfig

if TYPE_CHECKING:
    from .loop import Job, World

PLOT_METRICS = (
    "ctr", "conversion", "satisfaction", "retention", "coverage", "gini", "popularity", "ild",
    "HR@10", "gap[activity]_satisfaction", "gap[gender]_popularity", "gap[age]_popularity",
)  # fmt: skip
SUMMARY_METRICS = ("ctr", "conversion", "satisfaction", "retention", "coverage", "gini", "popularity", "ild")
KEYS = ("recommender", "update", "intervention")


def load_rounds(output: str | Path, jobs: list["Job"]) -> pd.DataFrame:
    """Every run's rows with its recommender, update, intervention and seed."""
    frames = []
    for job in jobs:
        path = Path(output) / "runs" / job.name / "rounds.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        frame = pd.DataFrame(rows)
        frame.insert(0, "seed", job.seed)
        frame.insert(0, "intervention", job.intervention.key)
        frame.insert(0, "update", job.update.key)
        frame.insert(0, "recommender", job.recommender.key)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_metrics(table: pd.DataFrame, directory: str | Path, metrics=PLOT_METRICS) -> list[Path]:
    """One PNG per metric: the metric against the round, a line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in metrics:
        if metric not in table or table[metric].isna().all():
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=90)
        for key, group in table.groupby(list(KEYS), sort=True):
            stats = group.groupby("round")[metric].agg(["mean", "min", "max"]).dropna()
            if stats.empty:
                continue
            label = " / ".join(k for k in key if k not in ("none",))
            (line,) = ax.plot(stats.index, stats["mean"], label=label, linewidth=1.4,
                              linestyle="--" if key[1] != "none" else "-")  # fmt: skip
            ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
        ax.set_xlabel("round")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} by round (mean over seeds; band: min-max)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        name = metric.replace("@", "").replace("[", "_").replace("]", "")
        path = directory / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def summary_table(table: pd.DataFrame, metrics=SUMMARY_METRICS, hr: str = "HR@10") -> pd.DataFrame:
    """Per configuration: first- and last-round means (and std over seeds) of ``metrics``."""
    rows = []
    last_round = table["round"].max()
    for key, group in table.groupby(list(KEYS), sort=True):
        row: dict[str, Any] = dict(zip(KEYS, key), seeds=group["seed"].nunique())
        first, last = group[group["round"] == 1], group[group["round"] == last_round]
        for metric in (*metrics, hr):
            if metric not in group:
                continue
            row[f"{metric} first"] = first[metric].mean()
            row[f"{metric} last"] = last[metric].mean()
            row[f"{metric} last std"] = last[metric].std(ddof=0)
        row["s/round (no update)"] = group["round_seconds"].mean()
        # With eval_every > 1 most rounds carry no evaluation: average over those that do.
        evaluated = group[hr].notna() if hr in group else pd.Series(True, index=group.index)
        row["s/round (eval)"] = group.loc[evaluated, "eval_seconds"].mean()
        updates = group.loc[group.get("updated", pd.Series(False, index=group.index)).fillna(False).astype(bool), "update_seconds"]
        row["s/update"] = updates.mean() if len(updates) else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def _markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "nan" if np.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def write_report(cfg: SimulationConfig, output: str | Path, world: "World", jobs: list["Job"]) -> pd.DataFrame:
    output = Path(output)
    table = load_rounds(output, jobs)
    with (output / "rounds.jsonl").open("w") as f:
        for record in table.to_dict(orient="records"):
            f.write(json.dumps(record, default=float) + "\n")
    plots = plot_metrics(table, output / "plots")
    summary = summary_table(table, hr=f"HR@{cfg.eval_k}")
    notes = {}
    for job in jobs:
        path = output / "runs" / job.name / "notes.json"
        if path.exists():
            for note in json.loads(path.read_text())["notes"]:
                if "cannot" in note:
                    notes[note] = True
    lines = [
        "# Feedback-loop simulation",
        "",
        f"Data: {world.data.name} ({len(world.users)} users, {len(world.items)} items); "
        f"{cfg.rounds} rounds, slates of {cfg.slate_size}, seeds {cfg.seeds}.",
        "",
        "## Oracle (ground-truth user model)",
        "",
        "Held-out report set (never used for fitting or calibration): "
        + ", ".join(f"{k} {v}" for k, v in world.oracle.info.items() if k.startswith("report_")),
        "",
        "## First and last round (mean over seeds; std over seeds at the last round)",
        "",
        _markdown(summary),
        "",
        "Plots: " + ", ".join(f"[{p.stem}](plots/{p.name})" for p in plots),
    ]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    (output / "summary.md").write_text("\n".join(lines) + "\n")
    return table


__all__ = ["load_rounds", "plot_metrics", "summary_table", "write_report"]
