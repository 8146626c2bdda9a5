"""Compare run directories: a markdown report with paired significance tests, and plots.

A run directory is what :func:`promptrec.pipeline.train_and_evaluate` writes (see
:func:`promptrec.pipeline.write_run`): ``metrics.json`` with a ``"model"`` and a ``"popularity"``
entry (plus ``"command"``, ``"config"``, ``"data"``), ``per_user_{entry}.parquet``,
``recommendations_{entry}.parquet`` and ``item_popularity.parquet``. A directory holding a single
results JSON with the same keys (``promptrec evaluate --output``), or that JSON file itself, is
read too; what it lacks (per-user files, recommendations) is left out of the report, which says so.

Each run gives two rows: ``<run>`` (its model) and ``<run>/<baseline>`` (``popularity`` by default);
a baseline with the same per-user values as one already listed (runs on the same split) is listed
once, and each model is paired with it.
:func:`compare_runs` writes ``report.md``, ``metric_at_k.png``, ``popularity.png`` and
``groups.png`` (the last two when the runs hold what they need) and returns the markdown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .metrics import parse_metric
from .significance import paired_test

ACCURACY_KEYS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")
CURVE_FAMILIES = ("HR", "NDCG")
BEYOND_KEYS = ("coverage", "ILD", "novelty", "avg_popularity", "gini")


@dataclass
class Entry:
    """One row of the report: a model or a baseline of one run."""

    name: str  # "<run>" or "<run>/<baseline>"
    run: str
    summary: dict[str, Any]
    command: str | None
    per_user: pd.DataFrame | None  # user_id + one column per metric
    recommendations: pd.DataFrame | None  # user_id, item_id, rank
    item_popularity: pd.Series | None  # training interactions per catalogue item
    baseline: str | None = None  # for a model row: the name of its run's baseline row


# -- reading -----------------------------------------------------------------------------------
def _results_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run directory")
    if (path / "metrics.json").is_file():
        return path / "metrics.json"
    found = sorted(path.glob("*.json"))
    if len(found) != 1:
        raise ValueError(f"{path}: expected metrics.json or a single results JSON, found {[p.name for p in found]}")
    return found[0]


def _read_parquet(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.is_file() else None


def load_run(path: str | Path, baseline: str = "popularity", name: str | None = None) -> list[Entry]:
    """The ``"model"`` entry and, if present, the ``baseline`` entry of a run directory, as rows
    ``name`` and ``name/baseline``; ``name`` defaults to the directory's (or JSON file's) name.
    """
    path = Path(path)
    results_file = _results_file(path)
    results = json.loads(results_file.read_text())
    if "model" not in results:
        raise ValueError(f"{results_file}: no 'model' entry (keys: {sorted(results)})")
    folder = results_file.parent
    run = name or (path.name if path.is_dir() else path.stem)
    popularity = _read_parquet(folder / "item_popularity.parquet")
    counts = None if popularity is None else popularity.set_index("item_id")["train_count"]
    entries = []
    own_baseline = f"{run}/{baseline}" if baseline in results else None
    for key, row in (("model", run), (baseline, own_baseline)):
        if key not in results:
            continue
        entries.append(
            Entry(
                name=row,
                run=run,
                summary=results[key],
                command=results.get("command"),
                per_user=_read_parquet(folder / f"per_user_{key}.parquet"),
                recommendations=_read_parquet(folder / f"recommendations_{key}.parquet"),
                item_popularity=counts,
                baseline=own_baseline if key == "model" else None,
            )
        )
    return entries


def _same_results(a: Entry, b: Entry) -> bool:
    """Whether two entries hold the same numbers: per user when both have them, else summaries."""
    if a.per_user is not None and b.per_user is not None:
        return a.per_user.equals(b.per_user)
    return all(a.summary.get(k) == b.summary.get(k) for k in ACCURACY_KEYS)


def load_runs(paths: Sequence[str | Path], baseline: str = "popularity") -> list[Entry]:
    """:func:`load_run` for each path; runs whose names clash are named ``parent/name`` instead."""
    paths = [Path(p) for p in paths]
    names = pd.Series([p.name if p.is_dir() else p.stem for p in paths])
    clash = names.duplicated(keep=False).to_numpy()
    names[clash] = [
        f"{p.resolve().parent.name}/{n}" for p, n in zip(np.asarray(paths, dtype=object)[clash], names[clash])
    ]
    if names.duplicated().any():
        raise ValueError(f"two runs are both called {names[names.duplicated()].iloc[0]!r}; rename a directory")
    entries: list[Entry] = []
    kept: list[Entry] = []  # baseline rows kept
    for p, name in zip(paths, names):
        model, *own = load_run(p, baseline, name)
        entries.append(model)
        for row in own:  # the run's baseline, when it has one
            # Runs on the same split usually carry the very same baseline: one row says it once,
            # and each model is paired with that row.
            twin = next((e for e in kept if _same_results(e, row)), None)
            if twin is None:
                kept.append(row)
                entries.append(row)
            else:
                model.baseline = twin.name
    return entries


# -- tables ------------------------------------------------------------------------------------
def _markdown(header: list[str], rows: list[list[str]], text: Sequence[int] = (0,)) -> str:
    """Markdown table; the ``text`` columns (names, commands) left-aligned, the others
    right-aligned so that numbers line up.
    """
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = [i in text for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if left[i] else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) if left[i] else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _number(value: Any, fmt: str = ".4f") -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return "-"
    return "-" if np.isnan(value) else format(float(value), fmt)


def results_table(entries: Sequence[Entry], metric: str = "NDCG@10") -> str:
    """One row per entry: accuracy, eval users, train/eval seconds and the command that made it."""
    keys = [*ACCURACY_KEYS, *([metric] if metric not in ACCURACY_KEYS else [])]
    header = ["model", *keys, "eval users", "train s", "eval s", "command"]
    rows = []
    for e in entries:
        s = e.summary
        users = s.get("eval_users")
        command = f"`{e.command}`".replace("|", "\\|") if e.command else "-"
        rows.append(
            [
                e.name,
                *(_number(s.get(k)) for k in keys),
                str(users) if users is not None else "-",
                _number(s.get("train_seconds"), ".1f"),
                _number(s.get("eval_seconds"), ".1f"),
                command,
            ]
        )
    return _markdown(header, rows, text=(0, len(header) - 1))


def _cutoff(metric: str) -> int:
    """The K of ``"NDCG@10"``; 10 for a metric without one (``"MRR"``)."""
    _, at, k = metric.partition("@")
    return int(k) if at and k.isdigit() else 10


def beyond_table(entries: Sequence[Entry], metric: str = "NDCG@10") -> str | None:
    """Beyond-accuracy metrics at the cutoff of ``metric``; None when no entry has them."""
    k = _cutoff(metric)
    keys = [f"{name}@{k}" for name in BEYOND_KEYS] + [f"{metric}_gap_active_vs_inactive"]
    have = [e for e in entries if any(key in e.summary for key in keys)]
    if not have:
        return None
    header = ["model", *keys[:-1], "gap active - inactive"]
    rows = [[e.name, *(_number(e.summary.get(key)) for key in keys)] for e in have]
    return _markdown(header, rows)


def paired_table(
    entries: Sequence[Entry], metric: str = "NDCG@10", baseline: str = "popularity", n_boot: int = 10000
) -> tuple[str | None, list[str]]:
    """Paired tests on per-user ``metric``: every entry against the first run's model, then each
    run's model against its own ``baseline`` (pairs already compared are not repeated).

    Returns the markdown table (None if no pair could be tested) and notes on pairs left out.
    """
    by_name = {e.name: e for e in entries}
    reference = entries[0]
    pairs = [(e, reference) for e in entries[1:]]
    pairs += [(e, by_name[e.baseline]) for e in entries if e.baseline in by_name]
    seen: set[frozenset[str]] = set()
    rows, notes = [], []
    for a, b in pairs:
        key = frozenset((a.name, b.name))
        if key in seen:
            continue
        seen.add(key)
        missing = [e.name for e in (a, b) if e.per_user is None or metric not in e.per_user.columns]
        if missing:
            notes.append(f"{a.name} vs {b.name}: no per-user {metric} for {', '.join(missing)}")
            continue
        try:
            t = paired_test(_values(a, metric), _values(b, metric), n_boot=n_boot)
        except ValueError as err:
            notes.append(f"{a.name} vs {b.name}: not tested: {err}")
            continue
        rows.append(
            [
                f"{a.name} - {b.name}",
                str(t["n"]),
                _number(t["mean_a"]),
                _number(t["mean_b"]),
                _number(t["mean_diff"], "+.4f"),
                f"[{_number(t['ci_low'], '+.4f')}, {_number(t['ci_high'], '+.4f')}]",
                _number(t["t_pvalue"], ".3g"),
                _number(t["wilcoxon_pvalue"], ".3g"),
            ]
        )
    if not rows:
        return None, notes
    header = ["A - B", "users", f"{metric} A", f"{metric} B", "diff", "95% CI (bootstrap)", "t-test p", "Wilcoxon p"]
    return _markdown(header, rows), notes


def _values(entry: Entry, metric: str) -> pd.Series:
    table = entry.per_user
    return pd.Series(table[metric].to_numpy(dtype=float), index=table["user_id"].astype(str))


# -- plots -------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _style(entry: Entry) -> dict[str, Any]:
    """Baselines dashed, models solid, so the two kinds read apart at a glance."""
    return {"linestyle": "--" if entry.name != entry.run else "-", "marker": "o"}


def plot_metric_at_k(entries: Sequence[Entry], path: Path) -> bool:
    """HR@K and NDCG@K against K, one line per entry; False (nothing written) if no entry has them."""
    curves = {}
    for family in CURVE_FAMILIES:
        for e in entries:
            ks = sorted(int(m.group(1)) for key in e.summary if (m := re.fullmatch(rf"{family}@(\d+)", key)))
            if ks:
                curves[family, e.name] = (ks, [e.summary[f"{family}@{k}"] for k in ks])
    if not curves:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVE_FAMILIES), figsize=(12, 4.5), layout="constrained")
    for ax, family in zip(axes, CURVE_FAMILIES):
        all_ks: set[int] = set()
        for e in entries:
            if (family, e.name) in curves:
                ks, values = curves[family, e.name]
                ax.plot(ks, values, label=e.name, **_style(e))
                all_ks.update(ks)
        ax.set_xticks(sorted(all_ks))
        ax.set_title(f"{family}@K")
        ax.set_xlabel("K (length of the recommendation list)")
        ax.set_ylabel(f"{family}@K")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    fig.suptitle("Accuracy at cutoff K (leave-one-out, all-item ranking)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _ecdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.sort(values)
    return x, np.arange(1, len(x) + 1) / len(x)


def plot_popularity(entries: Sequence[Entry], path: Path, k: int = 10) -> bool:
    """Distribution (ECDF) of the training popularity of recommended items (top ``k``, each slot
    counted) against the catalogue's (each item once); False if no entry has the data.
    """
    have = [e for e in entries if e.recommendations is not None and e.item_popularity is not None]
    if not have:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 5), layout="constrained")
    catalogues: list[tuple[str, pd.Series]] = []
    for e in have:
        if not any(e.item_popularity.equals(c) for _, c in catalogues):
            catalogues.append((e.run, e.item_popularity))
    for (run, counts), dashes in zip(catalogues, ["-", ":", "-."] * len(catalogues)):
        label = "catalogue" if len(catalogues) == 1 else f"catalogue ({run})"
        ecdf = _ecdf(counts.to_numpy(dtype=float) + 1)
        ax.step(*ecdf, where="post", color="black", linestyle=dashes, linewidth=2.5, label=label)
    for e in have:
        top = e.recommendations.loc[e.recommendations["rank"] <= k, "item_id"]
        counts = e.item_popularity.reindex(top).dropna().to_numpy(dtype=float)
        if len(counts):
            ax.step(*_ecdf(counts + 1), where="post", linestyle=_style(e)["linestyle"], label=f"{e.name} top-{k}")
    # Popularity is long-tailed on real data (a log axis spreads the tail); on a narrow range a log
    # axis would only show one or two tick labels, so it stays linear there.
    top_count = max(float(c.max()) for _, c in catalogues) + 1
    scale = "log" if top_count >= 30 else "linear"
    ax.set_xscale(scale)
    if scale == "log":
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_title(f"Popularity of recommended items (top-{k}) vs. the catalogue")
    ax.set_xlabel(f"training interactions of the item + 1 ({scale} scale)")
    ax.set_ylabel("share of items with at most x (ECDF)")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize="small")  # outside: ECDFs span the whole box
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_groups(entries: Sequence[Entry], metric: str, path: Path) -> bool:
    """Bars of ``metric`` per user group (``{metric}_group[...]`` keys), one bar per entry in each
    group; False if no entry has group keys.
    """
    pattern = re.compile(re.escape(metric) + r"_group\[(.+)\]")
    groups = {e.name: {m.group(1): v for key, v in e.summary.items() if (m := pattern.fullmatch(key))} for e in entries}
    labels = list(dict.fromkeys(label for values in groups.values() for label in values))
    shown = [e for e in entries if groups[e.name]]
    if not labels:
        return False
    plt = _pyplot()
    # Wide enough that every bar stays visible however many groups and entries there are.
    fig, ax = plt.subplots(figsize=(min(16.0, max(7.0, 2 + 0.3 * len(labels) * len(shown))), 5), layout="constrained")
    width = 0.8 / len(shown)
    x = np.arange(len(labels))
    for i, e in enumerate(shown):
        heights = [groups[e.name].get(label, np.nan) for label in labels]
        ax.bar(
            x + (i - (len(shown) - 1) / 2) * width,
            heights,
            width,
            label=e.name,
            hatch="//" if e.name != e.run else None,
        )
    ax.set_xticks(x, labels, rotation=30, ha="right")
    # Faint lines between attributes (activity | gender | age) so the families read apart.
    family = [label.split("=", 1)[0] for label in labels]
    for i in np.flatnonzero([a != b for a, b in pairwise(family)]):
        ax.axvline(i + 0.5, color="grey", linewidth=0.8, alpha=0.5)
    ax.set_title(f"{metric} by user group")
    # Two lines: on a narrow figure (few groups) one long line runs past the edges.
    ax.set_xlabel("user group\n(activity: the most / least active 20 % of users by training interactions)")
    ax.set_ylabel(f"mean {metric}")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize="small")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# -- the report --------------------------------------------------------------------------------
def _per_user_values(run: str | Path) -> pd.DataFrame:
    """A run's per-user results of its model, indexed by user."""
    values = load_run(run)[0].per_user
    if values is None:
        raise ValueError(f"{run}: no per-user results (a run directory written by promptrec train has them)")
    return values.set_index("user_id")


def seed_paired(
    runs: Sequence[str | Path], against: str | Path | Sequence[str | Path], metrics: Sequence[str] = ("HR@10", "NDCG@10")
) -> dict[str, Any]:
    """Average each user's values over ``runs`` (the seeds of one recipe) and test the mean
    against ``against``'s model on the same users (one run, or several seeds of the other
    recipe, averaged per user alike): paired t-test, Wilcoxon, bootstrap CI."""
    seeds = [_per_user_values(r) for r in runs]
    users = seeds[0].index
    if any(set(s.index) != set(users) for s in seeds):
        raise ValueError("the runs were evaluated on different users; seed averages need the same users")
    others = [against] if isinstance(against, (str, Path)) else list(against)
    bases = [_per_user_values(a) for a in others]
    for run, base in zip(others, bases):
        missing = users.difference(base.index)
        if len(missing):
            raise ValueError(f"{run} lacks {len(missing)} of the runs' users, e.g. {missing[0]!r}")
    out: dict[str, Any] = {
        "runs": [str(r) for r in runs], "against": [str(a) for a in others] if len(others) > 1 else str(others[0]),
        "users": len(users),
    }
    for m in metrics:
        mean = sum(s[m].astype(float).reindex(users) for s in seeds) / len(seeds)
        base_mean = sum(b[m].astype(float).reindex(users) for b in bases) / len(bases)
        out[m] = paired_test(mean, base_mean)
    return out


# Upper edges of the history-length groups (items before the test target, validation item included).
LENGTH_EDGES = (5, 6, 7, 9, 12, 20, 50)


def by_history_length(
    runs: Sequence[str | Path], histories: dict[str, list[str]], metric: str = "NDCG@10",
    edges: Sequence[int] = LENGTH_EDGES,
) -> dict[str, Any]:
    """Mean per-user ``metric`` of each run's model, grouped by the length of the user's history
    (``histories``: the evaluated stage's, e.g. ``split.history("test")``): where a model gains
    or loses against another."""
    lengths = pd.Series({u: len(h) for u, h in histories.items()}, name="length")
    frame = pd.DataFrame({"group": pd.cut(lengths, [0, *[e for e in edges if e < lengths.max()], lengths.max()])})
    for run in runs:
        frame[Path(run).name] = _per_user_values(run)[metric].astype(float).reindex(frame.index)
    grouped = frame.groupby("group", observed=True)  # in length order, empty groups left out
    out = grouped.mean().assign(users=grouped.size())
    out.index = out.index.astype(str)
    return {"metric": metric, "groups": out.round(5).reset_index().to_dict("records")}


def compare_runs(
    run_dirs: Sequence[str | Path],
    output: str | Path,
    metric: str = "NDCG@10",
    baseline: str = "popularity",
    n_boot: int = 10000,
) -> str:
    """Write ``output/report.md`` and the plots comparing ``run_dirs``; return the markdown."""
    if not run_dirs:
        raise ValueError("give at least one run directory")
    parse_metric(metric)  # a misspelled metric is an error, not an empty column
    entries = load_runs(run_dirs, baseline)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    k = _cutoff(metric)

    parts = [
        f"# Comparison of {len(run_dirs)} run(s)",
        "Numbers as each run directory recorded them; every row comes with the command that produced it.",
        "## Accuracy",
        results_table(entries, metric),
    ]
    table, notes = paired_table(entries, metric, baseline, n_boot=n_boot)
    parts.append(f"## Paired tests on per-user {metric}")
    parts.append(
        f"Each row against the first run's model ({entries[0].name}), and each model against its "
        f"run's {baseline}; diff = mean of A - B over the same users."
    )
    if table:
        parts.append(table)
    if notes:
        parts.append("\n".join(f"- {note}" for note in notes))
    beyond = beyond_table(entries, metric)
    if beyond:
        parts += [f"## Beyond accuracy (top-{k})", beyond]

    plots = [
        ("metric_at_k.png", "HR@K and NDCG@K", plot_metric_at_k(entries, out / "metric_at_k.png")),
        ("popularity.png", "popularity of recommended items", plot_popularity(entries, out / "popularity.png", k)),
        ("groups.png", f"{metric} by user group", plot_groups(entries, metric, out / "groups.png")),
    ]
    parts.append("## Plots")
    parts += [f"![{title}]({name})" for name, title, made in plots if made]
    missing = [f"- {name}: not drawn, the runs lack the data for {title}" for name, title, made in plots if not made]
    if missing:
        parts.append("\n".join(missing))
    text = "\n\n".join(parts) + "\n"
    (out / "report.md").write_text(text)
    return text


__all__ = [
    "Entry",
    "beyond_table",
    "compare_runs",
    "load_run",
    "load_runs",
    "paired_table",
    "plot_groups",
    "plot_metric_at_k",
    "plot_popularity",
    "results_table",
]
