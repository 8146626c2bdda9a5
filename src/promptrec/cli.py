"""``promptrec`` command line: a thin layer over the library (see :mod:`promptrec.pipeline`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

app = typer.Typer(
    help="promptrec: recommendation with language models (pretrain, prompt, predict), "
    "evaluated leak-free with all-item ranking.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Obtain and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("promptrec").setLevel(logging.INFO)


def _overrides(values: list[str]) -> dict:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="run config (YAML or JSON); see configs/")],
    output: Annotated[Path, typer.Option("--output", "-o", help="run directory: checkpoint, model/, metrics.json")],
    resume: Annotated[bool, typer.Option(help="continue from OUTPUT/checkpoint")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a config key, e.g. --set train.epochs=3")] = None,
    verbose: bool = False,
) -> None:
    """Train a P5 recommender, evaluate it and popularity on the test split, save the model."""
    from .config import RunConfig
    from .pipeline import train_and_evaluate

    _setup_logging(verbose)
    cfg = RunConfig.load(config)
    if set_:
        cfg = cfg.update(_overrides(set_))
    train_and_evaluate(cfg, output, resume=resume)


@app.command()
def quickstart(
    output: Annotated[Path, typer.Option("--output", "-o", help="run directory")] = Path("runs/quickstart"),
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a config key")] = None,
    verbose: bool = False,
) -> None:
    """Fetch MovieLens-100K, train a small model on the CPU, and compare it with popularity."""
    from .pipeline import quickstart_config, train_and_evaluate

    _setup_logging(verbose)
    cfg = quickstart_config()
    if set_:
        cfg = cfg.update(_overrides(set_))
    train_and_evaluate(cfg, output)


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", "-m", help="model directory written by train")],
    loader: Annotated[Optional[str], typer.Option(help="data loader (default: the model's config)")] = None,
    data: Annotated[Optional[str], typer.Option(help="dataset path (default: the model's config)")] = None,
    stage: Annotated[str, typer.Option(help="valid or test")] = "test",
    users: Annotated[int, typer.Option(help="evaluate this many users (0 = all)")] = 0,
    output: Annotated[Optional[Path], typer.Option(help="write results JSON here")] = None,
    verbose: bool = False,
) -> None:
    """Evaluate a saved model with all-item ranking on a leave-one-out split of its dataset."""
    from .config import DataConfig
    from .data import leave_one_out
    from .evaluation import format_table
    from .model import P5Recommender
    from .pipeline import SUMMARY_KEYS, _clean, evaluate_popularity, load_data

    _setup_logging(verbose)
    rec = P5Recommender.from_pretrained(model)
    dcfg = rec.config.data
    dcfg = DataConfig(loader=loader or dcfg.loader, path=data if data is not None else dcfg.path, options=dcfg.options)
    if users:
        rec.config = rec.config.update({"eval.users": users})
    split = leave_one_out(load_data(dcfg))
    result = _clean(rec.evaluate(split, stage=stage))
    pop, _ = evaluate_popularity(split, stage, k=max(rec.config.eval.ks))
    print(format_table({"model": result, "popularity": pop}, SUMMARY_KEYS))
    if output:
        output.write_text(json.dumps({"model": result, "popularity": pop}, indent=2, default=str))


@app.command()
def templates(
    model: Annotated[Path, typer.Option("--model", "-m", help="model directory written by train")],
    stage: Annotated[
        Optional[list[str]], typer.Option(help="stage(s) to evaluate, repeatable (default: valid and test)")
    ] = None,
    users: Annotated[int, typer.Option(help="evaluate this many users, drawn with the model's seed (0 = all)")] = 0,
    family: Annotated[str, typer.Option(help="template family")] = "sequential",
    output: Annotated[Optional[Path], typer.Option(help="write results JSON here")] = None,
    verbose: bool = False,
) -> None:
    """Evaluate a saved model with every template of a family (seen and unseen), all items
    ranked; pick the best seen template by validation NDCG@10 and report the unseen gap."""
    from .data import leave_one_out
    from .model import P5Recommender
    from .pipeline import load_data
    from .template_search import search_templates

    _setup_logging(verbose)
    rec = P5Recommender.from_pretrained(model)
    split = leave_one_out(load_data(rec.config.data))
    try:
        result = search_templates(rec, split, family=family, stages=stage or ("valid", "test"),
                                  users=users, seed=rec.config.train.seed)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    typer.echo(result.format())
    if result.templates(seen=True) and result.templates(seen=False):
        for st in result.stages:
            g = result.gap(st)
            typer.echo(
                f"{st}: seen mean NDCG@10 {g['NDCG@10']['seen']:.4f}, unseen {g['NDCG@10']['unseen']:.4f} "
                f"(gap {g['NDCG@10']['gap']:+.4f}); HR@10 {g['HR@10']['seen']:.4f} vs "
                f"{g['HR@10']['unseen']:.4f} (gap {g['HR@10']['gap']:+.4f}); {g['users']} users"
            )
    if output:
        output.write_text(result.to_json())


@app.command()
def recommend(
    model: Annotated[Path, typer.Option("--model", "-m", help="model directory")],
    user: Annotated[list[str], typer.Option("--user", "-u", help="external user id (repeatable)")],
    k: Annotated[int, typer.Option("-k", help="number of items")] = 10,
    history: Annotated[Optional[str], typer.Option(help="comma-separated item ids to use as the history instead of the stored one")] = None,
    json_: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Top-k items for users of a saved model, with titles."""
    from .model import P5Recommender

    rec = P5Recommender.from_pretrained(model)
    hist = {u: history.split(",") for u in user} if history else None
    unknown = [u for u in user if not rec.history(u) and hist is None]
    if unknown:
        typer.echo(f"note: no stored history for {', '.join(unknown)}; recommending from an empty history", err=True)
    recs = rec.recommend(user, k=k, histories=hist)
    titles = rec.items["title"] if "title" in rec.items else None
    recs["title"] = [titles.get(i) if titles is not None else None for i in recs["item_id"]]
    if json_:
        typer.echo(recs.to_json(orient="records"))
        return
    for u, g in recs.groupby("user_id", sort=False):
        typer.echo(f"user {u}:")
        for r in g.itertuples():
            typer.echo(f"  {r.rank:>3}. {r.item_id:<14} {r.score:9.4f}  {r.title or ''}")


@app.command()
def compare(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(metavar="RUN_DIR", help="run directories (metrics.json + per-user files) or results JSON files"),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="where report.md and the plots go")],
    metric: Annotated[str, typer.Option(help="per-user metric for the paired tests and group plot")] = "NDCG@10",
    baseline: Annotated[str, typer.Option(help="the baseline entry of each run directory")] = "popularity",
) -> None:
    """Compare runs: a markdown table, paired significance tests and plots in OUTPUT."""
    from .report import compare_runs

    try:
        text = compare_runs(run_dirs, output, metric=metric, baseline=baseline)
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err)) from err
    typer.echo(text)


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="model directory written by train (save_pretrained)")],
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    database: Annotated[
        Optional[str], typer.Option(help="feedback store: SQLAlchemy URL (postgresql+psycopg://...) or SQLite path")
    ] = None,
    api_key: Annotated[
        Optional[str],
        typer.Option(envvar="PROMPTREC_API_KEY", help="key for /feedback and /admin (X-API-Key header)"),
    ] = None,
    quantize: Annotated[Optional[str], typer.Option(help="int8: dynamic int8 Linear layers (CPU)")] = None,
    max_k: Annotated[int, typer.Option(help="largest k a request may ask")] = 100,
    batch_wait_ms: Annotated[
        float, typer.Option(help="how long a batch waits for more requests once the model is free (0: not at all)")
    ] = 0.0,
    model_processes: Annotated[
        int, typer.Option(help="copies of the model, each in its own process; batches run side by side")
    ] = 1,
    threads: Annotated[
        Optional[int], typer.Option(help="torch threads per model process (default: torch's)")
    ] = None,
    model_name: Annotated[
        str, typer.Option(help="the model's name on the OpenAI-compatible endpoints (/v1/models, /v1/chat/completions)")
    ] = "promptrec",
) -> None:
    """Serve MODEL over HTTP (OpenAPI docs at /docs): recommendations that follow each user's
    feedback at once, a durable feedback store, and model swaps without downtime (POST
    /admin/reload or SIGHUP). OpenAI clients get recommendations from /v1/chat/completions
    (base_url http://HOST:PORT/v1). The model runs in a child process beside the HTTP server."""
    import secrets
    import sys

    import uvicorn

    from .serving.app import ServeSettings, create_app

    _setup_logging(True)
    if not (model / "promptrec_config.json").is_file():
        raise typer.BadParameter(f"{model} is not a promptrec model directory (no promptrec_config.json)")
    if quantize not in (None, "int8"):
        raise typer.BadParameter(f"--quantize must be int8, got {quantize!r}")
    if not api_key:
        api_key = secrets.token_urlsafe(24)
        print(f"no --api-key or PROMPTREC_API_KEY: write and admin requests need X-API-Key: {api_key}", file=sys.stderr)
    settings = ServeSettings(
        model_dir=model, database=database, api_key=api_key, quantize=quantize, max_k=max_k,
        batch_wait_ms=batch_wait_ms, model_processes=model_processes, threads=threads, model_name=model_name,
    )
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)


@app.command()
def chat(
    model: Annotated[Path, typer.Option("--model", "-m", help="model directory written by train")],
    user: Annotated[
        Optional[str], typer.Option("--user", "-u", help="start from this user's stored history (or say 'I am user 42')")
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="items per reply")] = 10,
    threshold: Annotated[
        float, typer.Option(min=0, max=100, help="fuzzy-match score (0-100) a title or attribute value must reach")
    ] = 85.0,
    json_: Annotated[bool, typer.Option("--json", help="one JSON object per reply: text, items, mentions, state")] = False,
) -> None:
    """Talk to a saved model: every line read from the terminal or a pipe is one turn, answered
    with recommendations. Name items by title (typos are fine) or id ("item 50"), attributes by
    value (a genre, category or brand); "not", "I didn't like", "no more" mark dislikes. For
    example: "I am user 196", "I liked Toy Story and Fargo", "not Star Wars", "something in
    genre comedy", "start over". "quit" or the end of the input ends the session."""
    import sys

    from .conversation import Catalogue, Conversation, engine_backend
    from .serving.engine import Engine

    if not (model / "promptrec_config.json").is_file():
        raise typer.BadParameter(f"{model} is not a promptrec model directory (no promptrec_config.json)")
    engine = Engine(model)
    conversation = Conversation(
        Catalogue.from_recommender(engine.rec, threshold), engine_backend(engine), user_id=user, k=k
    )
    interactive = sys.stdin.isatty()
    if interactive:
        typer.echo("Tell me what you liked or did not; 'quit' to leave.")
    while True:
        if interactive:
            typer.echo("> ", nl=False)
        line = sys.stdin.readline()
        if not line or line.strip().lower() in {"quit", "exit"}:
            break
        if not line.strip():
            continue
        reply = conversation.turn(line.strip())
        typer.echo(json.dumps(reply.to_dict()) if json_ else reply.text + "\n")


@app.command("llm")
def llm_eval(
    base_url: Annotated[str, typer.Option(help="the endpoint's /v1 address, e.g. http://127.0.0.1:8000/v1")],
    model: Annotated[str, typer.Option(help="model name the endpoint serves")],
    loader: Annotated[str, typer.Option(help="data loader: ml-100k, p5, movielens, tabular")] = "ml-100k",
    data: Annotated[Optional[str], typer.Option(help="dataset path (ml-100k: empty = the cached default copy)")] = None,
    option: Annotated[Optional[list[str]], typer.Option(help="loader argument, e.g. --option items=items.csv")] = None,
    mode: Annotated[str, typer.Option(help="generate (the model names items) or rerank (it orders a retriever's candidates)")] = "generate",
    retriever: Annotated[str, typer.Option(help="registered recommender (or saved model directory) that proposes candidates and fills short lists")] = "popularity",
    candidates: Annotated[int, typer.Option(help="rerank: candidates shown")] = 20,
    shots: Annotated[int, typer.Option(help="few-shot demonstrations from other users' training data")] = 0,
    template: Annotated[Optional[str], typer.Option(help="template id (default chat-1 / chat-rerank-1)")] = None,
    users: Annotated[int, typer.Option(help="evaluate a seeded sample of this many test users (0 = all)")] = 500,
    k: Annotated[int, typer.Option("-k", help="list length")] = 10,
    api_key_env: Annotated[str, typer.Option(help="environment variable holding the API key (never logged)")] = "OPENAI_API_KEY",
    cache_dir: Annotated[Path, typer.Option(help="on-disk response cache: a rerun makes no request")] = Path(".cache/promptrec-llm"),
    concurrency: Annotated[int, typer.Option(help="requests in flight at most")] = 8,
    max_tokens_total: Annotated[Optional[int], typer.Option(help="token budget (prompt + completion)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="other LLMRecommender parameter, e.g. --set logprobs=true")] = None,
    output: Annotated[Optional[Path], typer.Option(help="write results JSON here")] = None,
    verbose: bool = False,
) -> None:
    """Evaluate a chat model behind an OpenAI-compatible endpoint as a recommender: all items
    ranked, history excluded, answers grounded in the catalogue; prints HR/NDCG with the
    invalid-answer, parse-failure and fill rates, requests, cache hits, tokens and wall time."""
    import numpy as np

    from .config import DataConfig
    from .data import leave_one_out
    from .evaluation import evaluate_rankings
    from .llm import LLMRecommender
    from .pipeline import load_data

    _setup_logging(verbose)
    split = leave_one_out(load_data(DataConfig(loader=loader, path=data, options=_overrides(option or []))))
    params = dict(base_url=base_url, model=model, mode=mode, retriever=retriever, candidates=candidates, shots=shots,
                  template=template, api_key_env=api_key_env, cache_dir=str(cache_dir), concurrency=concurrency,
                  max_tokens_total=max_tokens_total, **_overrides(set_ or []))
    rec = LLMRecommender(**params).fit(split)
    pool = split.test["user_id"].tolist()
    chosen = pool if not users or users >= len(pool) else sorted(np.random.default_rng(0).choice(pool, users, replace=False))
    cutoffs = [c for c in (1, 5, 10, 20) if c <= k]
    summary, _ = evaluate_rankings(rec, split, k=k, users=chosen, progress=True,
                                   metrics=[f"{m}@{c}" for m in ("HR", "NDCG") for c in cutoffs])
    result = {**summary, **rec.stats()}
    print(json.dumps(result, indent=2, default=str))
    if output:
        output.write_text(json.dumps(result, indent=2, default=str))


@app.command()
def update(
    model: Annotated[Path, typer.Option("--model", "-m", help="model directory to start from")],
    database: Annotated[str, typer.Option(help="feedback store (SQLAlchemy URL or SQLite path)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="where the updated model directory goes")],
    since: Annotated[Optional[float], typer.Option(help="use events from this unix time on (default: all)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="fine-tuning config key, e.g. train.epochs=2")] = None,
) -> None:
    """Fine-tune MODEL on the feedback stored since SINCE (warm start) and write a new model
    directory; point a running server at it with POST /admin/reload."""
    from .serving.update import update_model

    _setup_logging(True)
    if output.resolve() == model.resolve():
        raise typer.BadParameter("--output must differ from --model: the running server still reads it")
    try:
        summary = update_model(model, database, output, since=since, overrides=_overrides(set_ or []))
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err)) from err
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def simulate(
    config: Annotated[Path, typer.Option("--config", "-c", help="simulation config (YAML or JSON); see configs/simulate_ml100k.yaml")],
    output: Annotated[Path, typer.Option("--output", "-o", help="run directory: rounds.jsonl, summary.md, plots/, runs/")] = Path(
        "runs/simulate"
    ),
    resume: Annotated[bool, typer.Option(help="continue every run from its last round checkpoint")] = False,
    workers: Annotated[int, typer.Option(min=1, help="runs (seeds, recommenders, strategies) in parallel processes")] = 1,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a config key, e.g. --set rounds=10")] = None,
    verbose: bool = False,
) -> None:
    """Feedback-loop simulation: each round the recommender's slates go to simulated users (a
    ground-truth model fitted on the real data, never shown to the recommender), their clicks join
    the interaction log, and the recommender is updated (none, retrain or finetune). Writes per-round
    CTR, conversion, satisfaction, retention, coverage, exposure Gini, popularity, diversity, group
    gaps and held-out accuracy, with plots and a summary."""
    from .simulation import SimulationConfig
    from .simulation import simulate as run_simulation

    _setup_logging(verbose)
    cfg = SimulationConfig.load(config)
    if set_:
        cfg = cfg.update(_overrides(set_))
    try:
        run_simulation(cfg, output, resume=resume, workers=workers)
    except FileExistsError as err:
        raise typer.BadParameter(str(err)) from err
    typer.echo(str(Path(output) / "summary.md"))


@data_app.command("get")
def data_get(
    name: Annotated[str, typer.Argument(help="dataset name: ml-100k")],
    source: Annotated[Optional[Path], typer.Option(help="a local copy (directory or zip) to use first")] = None,
    force: bool = False,
) -> None:
    """Obtain a dataset into the cache (local path, the official download, or the offline mirror)."""
    from .data.download import get_ml100k

    _setup_logging(False)
    if name != "ml-100k":
        raise typer.BadParameter(f"unknown dataset {name!r}; available: ml-100k")
    typer.echo(str(get_ml100k(source, force=force)))


@data_app.command("info")
def data_info(
    loader: Annotated[str, typer.Option(help="data loader: p5, ml-100k, movielens, tabular")],
    path: Annotated[Optional[str], typer.Option(help="dataset path")] = None,
) -> None:
    """Load a dataset and print its size and leave-one-out split sizes."""
    from .config import DataConfig
    from .data import leave_one_out
    from .pipeline import load_data

    data = load_data(DataConfig(loader=loader, path=path))
    split = leave_one_out(data)
    info = {**data.summary(), "train": len(split.train), "valid": len(split.valid), "test": len(split.test)}
    typer.echo(json.dumps(info, indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
