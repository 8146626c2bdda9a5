"""The HTTP API: FastAPI over one saved model directory and a feedback store.

``create_app(ServeSettings(model_dir=...))`` builds the app; ``promptrec serve`` runs it under
uvicorn. Endpoints (OpenAPI at ``/docs``):

- ``POST /recommend``: ranked items with scores and titles for a user, from their saved history
  plus the feedback acknowledged so far (or an explicit history), optionally restricted to
  candidates. Unknown users get the popularity order (``strategy: "popularity"``). With
  ``"explain": true`` (a server started with an explainer LLM, ``promptrec serve --explain``),
  each of the first ``explain_top`` items also carries a one-sentence explanation and its
  grounding check, the same sentence ``promptrec recommend --explain`` writes.
- ``POST /score`` (yes/no probability) and ``POST /rate`` (expected stars): only when the model
  was trained on that family, else 409.
- ``POST /feedback`` (write key): events, acknowledged only after the store committed them; event
  ids make retries idempotent.
- ``POST /admin/reload`` (admin key) or SIGHUP: load a model directory in new model processes beside
  the running ones, then swap. Requests in flight finish on the old model and new ones start on
  the new one, so none fails during the swap; a directory that does not load leaves the old model
  serving.
- ``GET /v1/models``, ``POST /v1/chat/completions``: the OpenAI chat protocol (JSON or streamed),
  answered by a conversational session over the same ranking as ``/recommend``
  (:mod:`promptrec.serving.openai_api`).
- ``GET /health`` (the process answers), ``GET /ready`` (model loaded and store reachable),
  ``GET /metrics`` (Prometheus: request counts, latency histogram, batch sizes, model restarts),
  ``GET /info`` (admin key).

Access (:mod:`promptrec.serving.security`): everything that answers about a user (/recommend,
/score, /rate, the chat endpoint) needs a key with the ``read`` scope unless the server runs in
public-read mode; /feedback needs ``write``, /admin/reload and /info ``admin``. A key goes in
``X-API-Key`` or ``Authorization: Bearer``. Bodies are parsed strictly (no NaN, Infinity, lone
surrogates or NUL) and error bodies never echo the input.

A model process that exits is replaced (:class:`~promptrec.serving.worker.ModelPool`); until
its replacement serves, requests that need the model get 503 with ``Retry-After``.

Answers are cached per (model version, user, the user's stored events, request): the events are
read from the store on every request and the key holds a digest of them, so feedback posted to
this server or to any other replica on the same store, or a new model, changes the key and a
cached answer is never stale. Nothing else about users or events is kept in the process: several
servers on one PostgreSQL store are interchangeable behind a load balancer. The model itself runs in child
processes (:mod:`promptrec.serving.worker`); this process never imports torch.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from .batching import MicroBatcher
from .engine import LIKE_THRESHOLD, Answer
from .openai_api import PREFIX as OPENAI_PREFIX
from .openai_api import OpenAIError, add_openai_routes
from .security import AccessControl, ApiKey, BodyGuard, KeyRing, Scope, StrictJSONRoute
from .store import FeedbackEvent, FeedbackStore, StoredEvent, events_fingerprint
from .worker import Job, ModelLoadError, ModelPool, ModelUnavailable

log = logging.getLogger("promptrec.serve")

ItemId = Annotated[str, Field(min_length=1, max_length=256)]
UserId = Annotated[str, Field(min_length=1, max_length=256)]
# The event loop shares the interpreter with the threads that wait on the model processes' pipes.
# A thread whose answer has arrived needs the lock back, and a busy loop hands it over only every
# switch interval (5 ms by default): up to 5 ms on each model answer, at every load level.
SWITCH_INTERVAL_S = 0.0005
HARD_MAX_LIST = 10_000  # schema bound on any list in a request; the settings may lower it
# The scope each protected path needs; every other path is open (/health, /ready, /metrics, the
# docs, /v1/models: nothing about a user).
REQUIRED: dict[str, Scope] = {
    "/recommend": "read", "/score": "read", "/rate": "read", "/v1/chat/completions": "read",
    "/feedback": "write", "/admin/reload": "admin", "/info": "admin",
}
SECURITY_SCHEMES = {
    "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "the same key, as OpenAI clients send it"},
}
ACCESS_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no API key, or an unknown one"},
    403: {"description": "the key lacks the scope this endpoint needs"},
}
MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"description": "no model process can answer now (one is restarting); see Retry-After"},
}


class ServeSettings(BaseModel):
    """Server settings; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_dir: Path
    database: str | None = None  # SQLAlchemy URL or SQLite path; None: feedback.db beside the model
    api_key: SecretStr | None = None  # a key with every scope (read, write, admin)
    keys: tuple[ApiKey, ...] = ()  # keys with the scopes each lists
    # True: read endpoints answer without a key (demos); write and admin still need one.
    public_read: bool = False
    body_timeout_s: float = Field(30.0, gt=0, le=3600)  # a body not received by then gets 408
    quantize: Literal["int8"] | None = None
    # "onnx": the LM's first-token logits on ONNX Runtime (pip install 'promptrec[onnx]').
    runtime: Literal["default", "onnx"] = "default"
    max_k: int = Field(100, ge=1, le=1000)
    max_events: int = Field(1000, ge=1, le=HARD_MAX_LIST)  # per /feedback request
    max_pairs: int = Field(1000, ge=1, le=HARD_MAX_LIST)  # per /score or /rate request
    max_body_bytes: int = Field(1 << 20, ge=1024)
    history_events: int = Field(500, ge=1)  # newest feedback events read per user
    like_threshold: float = LIKE_THRESHOLD  # ratings below it demote the item
    batch_size: int = Field(32, ge=1)
    # 0: a batch takes what queued while the model was busy, and waits for nothing more.
    batch_wait_ms: float = Field(0.0, ge=0)
    model_processes: int = Field(1, ge=1, le=64)  # copies of the model, each in a process of its own
    # A process with torch and the model code imported, waiting to replace a model process that
    # exits: a restart then takes a model load, not the imports too.
    spare_process: bool = True
    threads: int | None = Field(None, ge=1)  # torch threads per model process; None: torch's default
    cache_size: int = Field(10_000, ge=0)
    model_name: str = Field("promptrec", min_length=1, max_length=256)  # the model id of the OpenAI endpoints
    # A pretrained causal LM (packaged name such as gemma-3-270m, or a directory) loaded in each
    # model process to explain recommendations on request; None: /recommend refuses "explain".
    explain: str | None = Field(None, min_length=1)
    # Items explained per answer, from the top: each costs a generation (about 2 s for Gemma 3
    # 270M on one CPU thread), so a k=100 list must not mean 100 of them.
    explain_top: int = Field(3, ge=1, le=20)

    def database_url(self) -> str:
        return self.database or str(self.model_dir.resolve().parent / "feedback.db")

    def key_ring(self) -> KeyRing:
        every = (ApiKey(secret=self.api_key, scopes=frozenset(("read", "write", "admin"))),) if self.api_key else ()
        return KeyRing(every + self.keys)


# -- request and response bodies ---------------------------------------------------------------
class Strict(BaseModel):
    # strict: JSON types as declared (true is not the integer 1, "5" is not 5).
    model_config = ConfigDict(extra="forbid", strict=True)


class RecommendRequest(Strict):
    user_id: UserId
    k: int = Field(10, ge=1, le=1000, description="list length (the server's max_k bounds it)")
    history: list[ItemId] | None = Field(
        None, max_length=HARD_MAX_LIST, description="explicit recent history, oldest first; replaces the stored one"
    )
    candidates: list[ItemId] | None = Field(
        None, min_length=1, max_length=HARD_MAX_LIST, description="rank only these items"
    )
    exclude_seen: bool = True
    explain: bool = Field(
        False, description="explain the first items (the server's explain_top) in one sentence each; "
        "needs a server started with an explainer"
    )


class Explanation(BaseModel):
    text: str = Field(description="why the item suits the user, in one sentence written by the explainer LLM")
    grounded: bool = Field(description="every catalogue title and attribute the sentence names was in its prompt")
    named_items: list[str] = Field(description="catalogue items the sentence names")
    named_attributes: list[str] = Field(description="attribute values (genres, years, ...) the sentence names")
    ungrounded_items: list[str] = Field(description="named items the prompt did not show")
    ungrounded_attributes: list[str] = Field(description="named attribute values the prompt did not show")
    seconds: float = Field(description="generation time, the item's share of its batch")


class RankedItem(BaseModel):
    item_id: str
    rank: int
    score: float
    title: str | None
    demoted: bool = Field(description="the user skipped or rated it low: ranked below the others")
    explanation: Explanation | None = Field(
        None, description="only when the request asked for explanations, on the first explain_top items"
    )


class RecommendResponse(BaseModel):
    user_id: str
    items: list[RankedItem]
    strategy: Literal["model", "popularity"] = Field(
        description="popularity for users with no history and no feedback (cold start)"
    )
    model_version: str
    cached: bool
    ignored_history: list[str] = Field(description="history items the model does not know")


class Pair(Strict):
    user_id: UserId
    item_id: ItemId


class PairsRequest(Strict):
    pairs: list[Pair] = Field(min_length=1, max_length=HARD_MAX_LIST)


class PairValue(BaseModel):
    user_id: str
    item_id: str
    value: float


class PairsResponse(BaseModel):
    values: list[PairValue]
    model_version: str


class FeedbackRequest(Strict):
    events: list[FeedbackEvent] = Field(min_length=1, max_length=HARD_MAX_LIST)


class FeedbackResponse(BaseModel):
    stored: int
    duplicates: int
    event_ids: list[str]


class ReloadRequest(Strict):
    model_dir: str | None = Field(None, max_length=4096, description="default: the directory served now")


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str
    model_dir: str
    load_seconds: float


# -- server state ------------------------------------------------------------------------------
class Server:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.engine: ModelPool | None = None
        self.store: FeedbackStore | None = None
        self.cache: OrderedDict[tuple, Answer] = OrderedDict()
        self.batcher = MicroBatcher(
            self._answer, settings.batch_size, settings.batch_wait_ms / 1000, workers=settings.model_processes
        )
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "promptrec_requests", "HTTP requests", ["method", "path", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "promptrec_request_seconds", "request latency", ["method", "path"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.batch_sizes = Histogram(
            "promptrec_batch_size", "requests per model call", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.cache_hits = Counter("promptrec_cache_hits", "answers served from the cache", registry=self.registry)
        self.reloads = Counter("promptrec_model_reloads", "model swaps", registry=self.registry)
        self.restarts = Counter(
            "promptrec_model_restarts", "model processes replaced after they exited", registry=self.registry
        )
        self._reload_lock = asyncio.Lock()

    async def _answer(self, jobs: Sequence[Job]) -> list[Answer]:
        engine = self.engine  # one model for the whole batch, even if a swap happens meanwhile
        assert engine is not None
        self.batch_sizes.observe(len(jobs))
        try:
            return await engine.answer_async(jobs)
        except ModelUnavailable:
            if self.engine is engine:
                raise
            return await self.engine.answer_async(jobs)  # the batch reached a model being swapped out: ask the new one

    async def rank(
        self,
        engine: ModelPool,
        user_id: str,
        k: int,
        *,
        explicit: list[str] | None = None,
        candidates: tuple[str, ...] | None = None,
        exclude_seen: bool = True,
        liked: Sequence[str] = (),
        explain: int = 0,
    ) -> tuple[Answer, bool]:
        """The model's answer for a user, through the cache and the micro-batcher, and whether it
        came from the cache: the one path of /recommend and the chat endpoint.

        liked: items the user has just said they like (in a chat); they count as clicks after
        the stored feedback, so they extend the history and are excluded as seen. explain: how
        many of the first items to explain (part of the cache key: a plain answer never stands
        in for an explained one, nor the other way round).
        """
        assert self.store is not None
        # Feedback counts even with an explicit history: skips and low ratings still demote.
        if self.store.reads_inline:
            events = self.store.user_events(user_id, self.settings.history_events)
        else:
            events = await run_in_threadpool(self.store.user_events, user_id, self.settings.history_events)
        # What the store holds for the user, read on every request (never remembered here: other
        # replicas write to the same store), as a digest of the events' seqs. Not the newest
        # timestamp (a late event with an old one must change the key too), and not the highest
        # seq either: on PostgreSQL a lower seq can commit after a higher one.
        key = (engine.version, user_id, events_fingerprint(events), k, exclude_seen, candidates,
               tuple(explicit) if explicit is not None else None, tuple(liked), explain)
        answer = self.cache.get(key)
        if answer is not None:
            self.cache.move_to_end(key)
            self.cache_hits.inc()
            return answer, True
        now = time.time()
        events = events + [StoredEvent(f"chat-{n}", user_id, i, "click", None, now, now, 0) for n, i in enumerate(liked)]
        answer = await self.batcher.submit(Job(user_id, events, explicit, k, exclude_seen, candidates, explain))
        if self.settings.cache_size:
            self.cache[key] = answer
            while len(self.cache) > self.settings.cache_size:
                self.cache.popitem(last=False)
        return answer, False

    async def reload(self, model_dir: str | Path | None) -> ReloadResponse:
        async with self._reload_lock:
            old = self.engine
            directory = Path(model_dir) if model_dir else (old.model_dir if old else self.settings.model_dir)
            s = self.settings
            spawned = old.take_spare() if old is not None else None
            new = await run_in_threadpool(
                partial(ModelPool, directory, s.model_processes, on_restart=self.restarts.inc, spare=s.spare_process,
                        spawned=spawned, quantize=s.quantize, like_threshold=s.like_threshold, threads=s.threads,
                        explain=s.explain, runtime=s.runtime)
            )
            self.engine = new  # one reference assignment: the swap is atomic
            if old is not None:
                # The old process finishes the call in flight (its batch was taken before the
                # swap), then stops.
                asyncio.get_running_loop().run_in_executor(None, old.close)
            self.reloads.inc()
            log.info("serving %s (version %s) after %s", directory, new.version, old.version if old else None)
            return ReloadResponse(
                model_version=new.version, previous_version=old.version if old else "",
                model_dir=str(directory), load_seconds=new.load_seconds,
            )


def _explanation(row: dict[str, Any]) -> Explanation:
    return Explanation(
        text=row["explanation"], grounded=row["grounded"], named_items=row["named_items"],
        named_attributes=row["named_attributes"], ungrounded_items=row["ungrounded_items"],
        ungrounded_attributes=row["ungrounded_attributes"], seconds=row["seconds"],
    )


def _is_model_dir(directory: str) -> bool:
    try:
        return (Path(directory) / "promptrec_config.json").is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte, ...
        return False


class Metrics:
    """Request count and latency per route and status, as a plain ASGI middleware.

    Not ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs every response through
    an extra task and stream, which cost more event-loop time than a small model's answer.
    """

    def __init__(self, app: Any, server: Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500  # what the client sees if the app fails before starting a response

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router records the matched route in the scope; unmatched paths share one label
            # so that scanning clients cannot create unbounded metric series.
            path = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.server.latency.labels(method, path).observe(time.perf_counter() - start)
            self.server.requests.labels(method, path, str(status)).inc()


def create_app(settings: ServeSettings) -> FastAPI:
    server = Server(settings)
    keys = settings.key_ring()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.store = await run_in_threadpool(FeedbackStore, settings.database_url())
        await server.reload(settings.model_dir)
        server.batcher.start()
        gc.freeze()  # what startup loaded lives as long as the server: out of the collector's way
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        loop = asyncio.get_running_loop()
        try:  # SIGHUP reloads the served directory (e.g. after it was replaced)
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload_logged(None)))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals
            pass
        yield
        await server.batcher.stop()
        if server.engine is not None:
            await run_in_threadpool(server.engine.close)
        server.store.close()

    async def _reload_logged(directory: str | None) -> None:
        try:
            await server.reload(directory)
        except Exception:
            log.exception("reload failed; the previous model keeps serving")

    app = FastAPI(
        title="promptrec",
        description="Recommendations from a saved promptrec model, adjusted by each user's feedback as it arrives.",
        lifespan=lifespan,
    )
    app.router.route_class = StrictJSONRoute  # before any route is added
    app.state.server = server

    def error(request: Request, status: int, message: str, code: str, headers: dict[str, str]) -> JSONResponse:
        if request.url.path.startswith(OPENAI_PREFIX):  # what OpenAI clients parse
            kind = "server_error" if status >= 500 else "invalid_request_error"
            response = OpenAIError(status, message, kind, code=code).response()
            response.headers.update(headers)
            return response
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    def denied(request: Request, status: int, message: str) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
        return error(request, status, message, "invalid_api_key" if status == 401 else "insufficient_scope", headers)

    app.add_middleware(Metrics, server=server)
    add_openai_routes(app, server, settings)
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    # Outermost (the last added): a refused request costs no body read. Metrics, innermost, counts
    # the requests that reached a route.
    public = frozenset({"read"}) if settings.public_read else frozenset()
    app.add_middleware(AccessControl, keys=keys, required=REQUIRED, public=public, deny=denied)

    @app.exception_handler(ModelUnavailable)
    async def unavailable(request: Request, err: ModelUnavailable) -> JSONResponse:
        return error(request, 503, f"{err}; retry in {err.retry_after} s", "model_restarting",
                     {"Retry-After": str(err.retry_after)})

    if not keys and not settings.public_read:
        log.warning("no API keys: every endpoint but /health, /ready, /metrics and the docs answers 401")
    if settings.public_read:
        log.warning("public-read mode: /recommend, /score, /rate and chat answer without a key")

    def engine() -> ModelPool:
        if server.engine is None:
            raise HTTPException(503, "no model loaded yet")
        return server.engine

    def unknown_items(eng: ModelPool, items: Sequence[str], what: str) -> None:
        missing = [i for i in dict.fromkeys(items) if i not in eng.catalogue]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise HTTPException(422, f"unknown {what}: {shown}")

    # -- endpoints -------------------------------------------------------------------------------
    @app.post("/recommend", response_model=RecommendResponse, responses={**ACCESS_ERRORS, **MODEL_ERRORS})
    async def recommend(body: RecommendRequest) -> RecommendResponse:
        eng = engine()
        if body.k > settings.max_k:
            raise HTTPException(422, f"k is {body.k}; this server allows at most {settings.max_k}")
        if body.explain and "explain" not in eng.capabilities:
            raise HTTPException(422, "this server has no explainer; start it with --explain MODEL to ask for explanations")
        if body.candidates is not None:
            unknown_items(eng, body.candidates, "candidate items")
        candidates = tuple(dict.fromkeys(body.candidates)) if body.candidates is not None else None
        explicit = list(body.history) if body.history is not None else None
        answer, cached = await server.rank(
            eng, body.user_id, body.k, explicit=explicit, candidates=candidates, exclude_seen=body.exclude_seen,
            explain=min(body.k, settings.explain_top) if body.explain else 0,
        )
        ignored = [i for i in (explicit or []) if i not in eng.catalogue]
        why = answer.explanations or []
        return RecommendResponse(
            user_id=body.user_id,
            items=[
                RankedItem(item_id=r.item_id, rank=n, score=r.score, title=eng.title(r.item_id), demoted=r.demoted,
                           explanation=_explanation(why[n - 1]) if n <= len(why) else None)
                for n, r in enumerate(answer.items, start=1)
            ],
            strategy=answer.strategy,
            model_version=answer.model_version,
            cached=cached,
            ignored_history=ignored,
        )

    async def pairs_for(body: PairsRequest, capability: str) -> tuple[ModelPool, list[tuple[str, str]]]:
        eng = engine()
        if capability not in eng.capabilities:
            raise HTTPException(409, f"this model does not answer /{capability}")
        if len(body.pairs) > settings.max_pairs:
            raise HTTPException(422, f"{len(body.pairs)} pairs; this server allows at most {settings.max_pairs}")
        pairs = [(p.user_id, p.item_id) for p in body.pairs]
        unknown_items(eng, [i for _, i in pairs], "items")
        return eng, pairs

    @app.post("/score", response_model=PairsResponse, responses={**ACCESS_ERRORS, **MODEL_ERRORS})
    async def score(body: PairsRequest) -> PairsResponse:
        """P(yes) of the yes/no family for each (user, item) pair, with the user's feedback."""
        eng, pairs = await pairs_for(body, "score")

        def run() -> list[float]:
            events = {u: server.store.user_events(u, settings.history_events) for u in dict.fromkeys(u for u, _ in pairs)}
            return eng.score(pairs, events)

        values = await run_in_threadpool(run)
        return PairsResponse(
            values=[PairValue(user_id=u, item_id=i, value=v) for (u, i), v in zip(pairs, values)],
            model_version=eng.version,
        )

    @app.post("/rate", response_model=PairsResponse, responses={**ACCESS_ERRORS, **MODEL_ERRORS})
    async def rate(body: PairsRequest) -> PairsResponse:
        """Expected star rating (1-5) of each (user, item) pair, from the rating family."""
        eng, pairs = await pairs_for(body, "rate")
        values = await run_in_threadpool(eng.rate, pairs)
        return PairsResponse(
            values=[PairValue(user_id=u, item_id=i, value=v) for (u, i), v in zip(pairs, values)],
            model_version=eng.version,
        )

    @app.post("/feedback", response_model=FeedbackResponse, responses=ACCESS_ERRORS)
    async def feedback(body: FeedbackRequest) -> FeedbackResponse:
        """Store events; the answer comes only after they are committed to the store. Items the
        model does not know are stored too (a later update may learn them)."""
        if len(body.events) > settings.max_events:
            raise HTTPException(422, f"{len(body.events)} events; this server allows at most {settings.max_events}")
        result = await run_in_threadpool(server.store.add, body.events)
        return FeedbackResponse(stored=result.stored, duplicates=result.duplicates, event_ids=result.event_ids)

    @app.post("/admin/reload", response_model=ReloadResponse, responses=ACCESS_ERRORS)
    async def reload(body: ReloadRequest | None = None) -> ReloadResponse:
        directory = body.model_dir if body else None
        if directory is not None and not _is_model_dir(directory):
            raise HTTPException(422, f"{directory[:200]} is not a promptrec model directory (no promptrec_config.json)")
        try:
            return await server.reload(directory)
        except ModelLoadError as err:
            raise HTTPException(422, f"could not load {directory}: {err}; the previous model keeps serving") from err

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 when every model process serves and the store answers; 503 (with Retry-After while
        a model process restarts) otherwise."""
        ok_store = server.store is not None and await run_in_threadpool(server.store.ping)
        processes = server.engine.processes() if server.engine is not None else []
        restarting = [p["retry_after"] for p in processes if p["state"] == "restarting"]
        ok_model = bool(processes) and not restarting
        ok = ok_model and ok_store
        body = {"status": "ready" if ok else "not ready", "model": ok_model, "store": ok_store,
                "model_processes_restarting": len(restarting)}
        headers = {"Retry-After": str(min(restarting))} if restarting else None
        return JSONResponse(body, status_code=200 if ok else 503, headers=headers)

    @app.get("/info", responses=ACCESS_ERRORS)
    async def info() -> dict[str, Any]:
        eng = engine()
        return {
            "model_dir": str(eng.model_dir),
            "model_version": eng.version,
            "items": len(eng.catalogue),
            "capabilities": sorted(eng.capabilities),
            "quantize": eng.quantize,
            "runtime": eng.runtime,
            "model_pids": eng.pids,  # the processes serving now
            "model_processes": eng.processes(),  # per copy: serving (pid) or restarting (retry_after)
            "model_restarts": eng.restarts,
            "public_read": settings.public_read,
            "store": server.store.url if server.store else None,  # passwords masked
            "batches": server.batcher.batches,
            "batched_requests": server.batcher.items,
            "cache_entries": len(server.cache),
            "max_k": settings.max_k,
            "explain": settings.explain,  # the explainer LLM, if any
            "explain_top": settings.explain_top,
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(server.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with the keys that AccessControl checks declared on each operation."""
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            for path, scope in REQUIRED.items():
                for operation in schema["paths"].get(path, {}).values():
                    operation["security"] = [{"APIKeyHeader": []}, {"HTTPBearer": []}]
                    public = scope == "read" and settings.public_read
                    operation["description"] = (operation.get("description", "") + "\n\nNeeds an API key with the "
                                                f"`{scope}` scope" + (" (not on this server: public read)" if public else "") + ".")
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    return app


__all__ = ["ServeSettings", "create_app"]
