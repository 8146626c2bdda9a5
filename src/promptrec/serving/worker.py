"""The model in a process of its own, behind the calls the HTTP server makes.

Why a process and not a thread: a small model's forward pass is mostly Python (module calls,
cache bookkeeping), and so is the HTTP stack. In one process both take turns on one interpreter
lock and the server uses one core however many it has; the model in a child process runs beside
the event loop instead of between its steps.

The parent talks to the child over a pipe, one JSON message each way per call (no pickle), one
call at a time. The server's micro-batches make that call from the event loop itself: it sends
and then waits for the pipe to become readable, where a thread would add two hand-overs of the
interpreter lock to every batch (probed under load: the hand-over to the thread alone took a
median 0.7 ms, its p90 1.9 ms). The child loads the model directory itself and answers with what
the HTTP side needs to know of it (version, catalogue, titles, capabilities). It exits when told to, or when
the pipe closes because the parent died, so a killed server leaves no model process behind.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from .engine import LIKE_THRESHOLD, Answer, Ranked
from .store import StoredEvent

log = logging.getLogger("promptrec.serve")

LOAD_TIMEOUT_S = 600.0  # importing torch and loading a large model on a busy machine
STOP_TIMEOUT_S = 30.0


class ModelLoadError(ValueError):
    """The model directory did not load in the model process."""


class ModelProcessError(RuntimeError):
    """The model process failed a call, or is gone."""


@dataclass(frozen=True)
class Job:
    """One /recommend request as the model process sees it."""

    user_id: str
    events: list[StoredEvent]
    explicit: list[str] | None
    k: int
    exclude_seen: bool
    candidates: tuple[str, ...] | None
    explain: int = 0  # explain the first this many items (the server checked it may)


# -- the child side ------------------------------------------------------------------------------
def _describe(engine: Any) -> dict[str, Any]:
    from .conversation import item_attributes

    return {
        "version": engine.version,
        "catalogue": engine.item_order,
        "titles": engine.titles,
        # What the chat endpoint grounds mentions in: attribute values and the users with a history.
        "attributes": item_attributes(engine.items),
        "users": engine.users,
        "capabilities": sorted(engine.capabilities),
        "load_seconds": engine.load_seconds,
    }


def _events(rows: Sequence[Sequence[Any]]) -> list[StoredEvent]:
    return [StoredEvent(*row) for row in rows]


def _answer(engine: Any, args: dict[str, Any]) -> list[dict[str, Any]]:
    from .engine import Query

    queries = []
    for job in args["jobs"]:
        state = engine.user_state(job["user_id"], _events(job["events"]), job["explicit"])
        candidates = job["candidates"]
        if candidates is not None:  # items validated against an older model may be gone
            candidates = tuple(c for c in candidates if c in engine.catalogue)
        queries.append(Query(job["user_id"], state, job["k"], job["exclude_seen"], candidates, job["explain"]))
    return [
        {"items": [[r.item_id, r.score, r.demoted] for r in a.items], "strategy": a.strategy, "version": a.model_version,
         "explanations": a.explanations}
        for a in engine.answer(queries)
    ]


def _score(engine: Any, args: dict[str, Any]) -> list[float]:
    histories = {u: engine.user_state(u, _events(rows)).history for u, rows in args["events"].items()}
    return engine.score([(u, i, histories[u]) for u, i in args["pairs"]])


def _rate(engine: Any, args: dict[str, Any]) -> list[float]:
    return engine.rate([tuple(p) for p in args["pairs"]])


HANDLERS = {"answer": _answer, "score": _score, "rate": _rate}


def _jobs(jobs: Sequence[Job]) -> dict[str, Any]:
    """An ``answer`` call's arguments as the child reads them."""
    return {"jobs": [
        {"user_id": j.user_id, "events": [astuple(e) for e in j.events], "explicit": j.explicit, "k": j.k,
         "exclude_seen": j.exclude_seen, "candidates": list(j.candidates) if j.candidates is not None else None,
         "explain": j.explain}
        for j in jobs
    ]}


def _answers(reply: list[dict[str, Any]]) -> list[Answer]:
    return [
        Answer([Ranked(i, s, d) for i, s, d in a["items"]], a["strategy"], a["version"], explanations=a["explanations"])
        for a in reply
    ]


def _child(conn: Any) -> None:
    """A model process: first the imports (torch, transformers, every recommender's code: most of
    a start's time), then whatever the parent says to load, then calls until told to stop."""
    # A served batch is a few short prompts: the tokenizer's thread pool only adds threads that
    # wake on every call and compete with the HTTP process for the cores (measured: a 4-prompt
    # call took twice as long with it on a busy 2-core machine). Set before the import reads it.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from .. import models  # noqa: F401  (each registers its recommenders)
    from .engine import Engine

    try:
        args = json.loads(conn.recv_bytes())["args"]  # {"op": "load", "args": ...}
    except (EOFError, OSError):  # the parent is gone, or closed a spare it no longer needs
        return
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    try:
        engine = Engine(args["model_dir"], args["quantize"], args["like_threshold"], explain=args["explain"],
                        runtime=args["runtime"])
    except Exception as err:  # noqa: BLE001  (reported to the parent, which keeps its old model)
        conn.send_bytes(json.dumps({"error": f"{type(err).__name__}: {err}"}).encode())
        return
    conn.send_bytes(json.dumps({"ok": _describe(engine)}).encode())
    # The loaded model is hundreds of thousands of long-lived objects: kept out of the garbage
    # collector's full passes, which would otherwise stall a request now and then.
    gc.freeze()
    while True:
        try:
            message = json.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the parent is gone
            return
        if message["op"] == "stop":
            conn.send_bytes(b'{"ok": null}')
            return
        try:
            reply = {"ok": HANDLERS[message["op"]](engine, message["args"])}
        except Exception as err:  # noqa: BLE001  (fails this call, not the process)
            log.exception("model call %s failed", message["op"])
            reply = {"error": f"{type(err).__name__}: {err}"}
        conn.send_bytes(json.dumps(reply).encode())


# -- the parent side -----------------------------------------------------------------------------
class Spawned:
    """A started model process that has loaded nothing yet: it imports, then waits for a
    directory. Kept as a spare, it turns a restart into a model load without the imports."""

    def __init__(self) -> None:
        # spawn, not fork: a forked copy of a process that already runs threads (the event loop's
        # pools, torch's) can inherit locks held by threads that do not exist in the child.
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_child, args=(child_conn,), name="promptrec-model", daemon=True)
        self.process.start()
        child_conn.close()  # the child's end lives in the child only: its death closes the pipe

    def discard(self) -> None:
        """Stop it: it has nothing loaded, so nothing is lost by killing it."""
        self.process.kill()
        self.process.join(5.0)
        self.conn.close()


class ModelProcess:
    """A loaded model directory in a child process; construction returns once it is loaded.

    Immutable as seen from the server, so a swap is one reference assignment. Calls are
    serialised (the child answers one at a time); ``close`` waits for the call in flight.
    ``spawned``: a process started earlier (a spare) to load into; a new one if None or dead.
    """

    def __init__(
        self,
        model_dir: str | Path,
        quantize: str | None = None,
        like_threshold: float = LIKE_THRESHOLD,
        threads: int | None = None,
        spawned: Spawned | None = None,
        explain: str | None = None,
        runtime: str | None = None,
    ) -> None:
        """``explain``: a pretrained LLM (packaged name or directory) loaded beside the model to
        explain recommendations (:class:`~promptrec.models.llm.explain.Explainer`); ``runtime``:
        the inference engine (:class:`~promptrec.serving.engine.Engine`)."""
        started = time.perf_counter()
        self.model_dir = Path(model_dir)
        self.quantize = quantize
        self.runtime = runtime or "default"
        load = {"op": "load", "args": {"model_dir": str(model_dir), "quantize": quantize, "runtime": runtime,
                                       "like_threshold": like_threshold, "threads": threads, "explain": explain}}
        if spawned is not None:
            try:
                spawned.conn.send_bytes(json.dumps(load).encode())
            except OSError:  # the spare died: start afresh
                spawned.discard()
                spawned = None
        if spawned is None:
            spawned = Spawned()
            spawned.conn.send_bytes(json.dumps(load).encode())  # buffered until the child reads it
        self._process, self._conn = spawned.process, spawned.conn
        self._lock = threading.Lock()
        try:
            info = self._receive(LOAD_TIMEOUT_S, ModelLoadError)
        except BaseException:
            self._kill()
            raise
        self.version: str = info["version"]
        self.catalogue: set[str] = set(info["catalogue"])
        self.titles: dict[str, str] = info["titles"]
        self.item_order: list[str] = info["catalogue"]
        self.attributes: dict[str, dict[str, list[str]]] = info["attributes"]
        self.users: list[str] = info["users"]
        self.capabilities: set[str] = set(info["capabilities"])
        self.load_seconds = round(time.perf_counter() - started, 3)
        self.pid = self._process.pid

    def title(self, item_id: str) -> str | None:
        return self.titles.get(item_id)

    def alive(self) -> bool:
        return self._process.is_alive()

    @property
    def sentinel(self) -> int:
        """Ready for :func:`multiprocessing.connection.wait` once the process has exited."""
        return self._process.sentinel

    @property
    def exitcode(self) -> int | None:
        return self._process.exitcode

    def discard(self) -> None:
        """Release what is left of a process that has exited (after any call in flight failed)."""
        with self._lock:
            self._process.join(1.0)
            self._conn.close()

    # -- calls -------------------------------------------------------------------------------
    def answer(self, jobs: Sequence[Job]) -> list[Answer]:
        return _answers(self._call("answer", _jobs(jobs)))

    async def answer_async(self, jobs: Sequence[Job]) -> list[Answer]:
        """``answer`` from the event loop, without a thread (module doc)."""
        return _answers(await self._call_async("answer", _jobs(jobs)))

    def score(self, pairs: Sequence[tuple[str, str]], events: dict[str, list[StoredEvent]]) -> list[float]:
        """P(yes) per (user, item); ``events``: each user's feedback, which shapes their history."""
        rows = {u: [astuple(e) for e in evs] for u, evs in events.items()}
        return self._call("score", {"pairs": [list(p) for p in pairs], "events": rows})

    def rate(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        return self._call("rate", {"pairs": [list(p) for p in pairs]})

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        with self._lock:
            try:
                self._conn.send_bytes(json.dumps({"op": op, "args": args}).encode())
            except OSError as err:
                self._process.join(1.0)  # a broken pipe: the process is gone, let alive() say so
                raise ModelProcessError(f"the model process is gone (exit code {self._process.exitcode})") from err
            return self._receive(None, ModelProcessError)

    async def _call_async(self, op: str, args: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        if not self._lock.acquire(blocking=False):  # a thread's call or a close is in flight
            return await loop.run_in_executor(None, self._call, op, args)
        # Shielded: a caller that stops waiting must not leave its reply in the pipe, where the
        # next call would read it as its own. The exchange finishes, and frees the lock, anyway.
        return await asyncio.shield(loop.create_task(self._exchange(op, args)))

    async def _exchange(self, op: str, args: dict[str, Any]) -> Any:
        """One call with the lock held: send, wait for the reply without blocking the loop, read."""
        try:
            try:
                # A message larger than the pipe's buffer blocks until the child has read the
                # rest: it is idle, waiting for this call, so that takes as long as copying it.
                self._conn.send_bytes(json.dumps({"op": op, "args": args}).encode())
            except OSError as err:
                self._process.join(1.0)
                raise ModelProcessError(f"the model process is gone (exit code {self._process.exitcode})") from err
            loop = asyncio.get_running_loop()
            readable = loop.create_future()
            fd = self._conn.fileno()
            # Readable means the reply has begun (the child writes it in one go) or the child is
            # gone (end of file): either way the read below does not wait on the child's work.
            loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            finally:
                loop.remove_reader(fd)
                # uvloop leaves a watched descriptor non-blocking: the read below, and the calls
                # threads make, must block until a whole message is in.
                os.set_blocking(fd, True)
            return self._receive(None, ModelProcessError)
        finally:
            self._lock.release()

    def _receive(self, timeout: float | None, error: type[Exception]) -> Any:
        if timeout is not None and not self._conn.poll(timeout):
            raise error(f"the model process did not answer within {timeout:.0f} s")
        try:
            reply = json.loads(self._conn.recv_bytes())
        except (EOFError, OSError) as err:
            self._process.join(1.0)
            raise error(f"the model process exited (exit code {self._process.exitcode})") from err
        if "error" in reply:
            raise error(reply["error"])
        return reply["ok"]

    # -- shutdown ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the child after the call in flight (if any) has finished."""
        with self._lock:
            try:
                self._conn.send_bytes(b'{"op": "stop"}')
                if self._conn.poll(STOP_TIMEOUT_S):
                    self._conn.recv_bytes()  # the child's goodbye
            except (EOFError, OSError):
                pass
            self._process.join(STOP_TIMEOUT_S)
            self._kill()
            self._conn.close()

    def _kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5.0)


class ModelUnavailable(ModelProcessError):
    """No model process can take the call now (one died and its replacement is loading, or the
    pool is closing): a temporary state, answered 503 with ``Retry-After: retry_after``."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


RESTART_BACKOFF_S = 1.0  # the wait before restarting a process that died young, doubled per death
RESTART_BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 10.0  # a process that served this long is restarted at once when it dies


class ModelPool:
    """``processes`` copies of one model directory, each in its own process; a call goes to an
    idle one. More than one pays off when the machine has cores to spare: batches then run side
    by side instead of one after another.

    The pool heals itself: a watcher thread waits on every process, and one that exits (killed,
    out of memory, a crash in native code) is replaced by a fresh process on the same directory,
    at once if it had served for ``STABLE_AFTER_S``, else after a back-off that doubles per death
    up to ``RESTART_BACKOFF_MAX_S`` (a model that crashes on load must not spin the CPU). Calls go
    to the processes that remain; with none left they fail at once with :class:`ModelUnavailable`
    instead of waiting for the reload.
    """

    def __init__(
        self, model_dir: str | Path, processes: int = 1, on_restart: Callable[[], None] | None = None,
        spare: bool = True, spawned: Spawned | None = None, **options: Any,
    ) -> None:
        """``on_restart``: called after each replacement process is serving; ``spare``: keep a
        process that has done its imports ready for a restart (seconds faster, at the memory
        cost of an idle interpreter with torch); ``options``: what each :class:`ModelProcess`
        takes besides the directory; ``spawned``: a process with its imports done (the spare of
        the pool this one replaces), for the first copy to load into."""
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        started = time.perf_counter()
        # The spare starts first: its imports run beside the members' instead of later, beside
        # the requests they serve.
        self._spare: Spawned | None = Spawned() if spare else None
        with ThreadPoolExecutor(processes) as pool:  # loaded side by side
            futures = [pool.submit(ModelProcess, model_dir, spawned=spawned if n == 0 else None, **options)
                       for n in range(processes)]
        members, errors = [], []
        for future in futures:
            try:
                members.append(future.result())
            except Exception as err:  # noqa: BLE001  (the first error is raised below)
                errors.append(err)
        if errors:
            for member in members:
                member.close()
            if self._spare is not None:
                self._spare.discard()
            raise errors[0]
        first = members[0]
        self.model_dir, self.quantize, self.version = first.model_dir, first.quantize, first.version
        self.runtime = first.runtime
        self.catalogue, self.titles, self.capabilities = first.catalogue, first.titles, first.capabilities
        self.item_order, self.attributes, self.users = first.item_order, first.attributes, first.users
        self._grounding: Any = None
        self.load_seconds = round(time.perf_counter() - started, 3)
        self._options = options
        self._on_restart = on_restart
        # Slot n holds the process serving as copy n, or None while its replacement loads.
        self._slots: list[ModelProcess | None] = list(members)
        self._born = [time.monotonic()] * processes
        self._deaths = [0] * processes  # consecutive early deaths of the slot: the back-off exponent
        self._back_at = [0.0] * processes  # when a restarting slot is expected to serve again
        self._idle: list[ModelProcess] = list(members)
        self._state = threading.Condition(threading.RLock())
        self._closed = threading.Event()
        self.restarts = 0
        self._keep_spare = spare
        self._watcher = threading.Thread(target=self._watch, name="promptrec-model-watch", daemon=True)
        self._watcher.start()

    def title(self, item_id: str) -> str | None:
        return self.titles.get(item_id)

    def grounding(self) -> Any:
        """The :class:`~promptrec.serving.conversation.Catalogue` of this model, built on first use (it
        needs rapidfuzz, an optional dependency) and kept as long as the model serves."""
        if self._grounding is None:
            from .conversation import Catalogue

            self._grounding = Catalogue(self.item_order, self.titles, self.attributes, self.users)
        return self._grounding

    # -- health --------------------------------------------------------------------------------
    def alive(self) -> bool:
        """Every copy is serving (none dead or restarting)."""
        with self._state:
            return all(m is not None and m.alive() for m in self._slots)

    @property
    def pids(self) -> list[int]:
        """The processes serving now (a restarting copy has none)."""
        with self._state:
            return [m.pid for m in self._slots if m is not None and m.alive()]

    def processes(self) -> list[dict[str, Any]]:
        """Per copy: ``{"state": "serving", "pid"}`` or ``{"state": "restarting", "retry_after"}``."""
        with self._state:
            return [
                {"state": "serving", "pid": m.pid} if m is not None and m.alive()
                else {"state": "restarting", "retry_after": self._retry_after(n)}
                for n, m in enumerate(self._slots)
            ]

    def _retry_after(self, slot: int) -> int:
        # When the slot should serve again: its restart time plus one load, in whole seconds.
        return max(1, math.ceil(self._back_at[slot] - time.monotonic()))

    # -- supervision ---------------------------------------------------------------------------
    def _watch(self) -> None:
        """Wait on every serving process; one that exits is replaced."""
        while not self._closed.is_set():
            with self._state:
                watched = {m.sentinel: (n, m) for n, m in enumerate(self._slots) if m is not None}
            # The timeout only bounds how late a close or a new process is noticed.
            for sentinel in multiprocessing.connection.wait(list(watched), timeout=0.5):
                self._lost(*watched[sentinel])

    def _lost(self, slot: int, member: ModelProcess) -> None:
        """``member`` (serving as ``slot``) is dead: drop it and schedule its replacement."""
        with self._state:
            if self._closed.is_set() or self._slots[slot] is not member:
                return  # closing, or already replaced
            self._slots[slot] = None
            if member in self._idle:
                self._idle.remove(member)
            lived = time.monotonic() - self._born[slot]
            self._deaths[slot] = 0 if lived >= STABLE_AFTER_S else self._deaths[slot] + 1
            delay = self._backoff(slot)
            self._back_at[slot] = time.monotonic() + delay + self.load_seconds
            self._state.notify_all()  # callers waiting for a process must not wait for this one
            threading.Thread(target=self._restart, args=(slot, delay), name="promptrec-model-restart",
                             daemon=True).start()
        member.discard()  # reaps the process: its exit code is known after this
        log.warning("model process %d exited (exit code %s) after %.1f s; a new one starts in %.1f s",
                    member.pid, member.exitcode, lived, delay)

    def _backoff(self, slot: int) -> float:
        deaths = self._deaths[slot]
        return 0.0 if deaths == 0 else min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (deaths - 1))

    def _restart(self, slot: int, delay: float) -> None:
        while not self._closed.wait(delay):
            started = time.monotonic()
            with self._state:
                spare, self._spare = self._spare, None
            try:
                member = ModelProcess(self.model_dir, spawned=spare, **self._options)
                if member.version != self.version:
                    member.close()
                    raise ModelLoadError(
                        f"{self.model_dir} changed on disk (version {self.version}, now {member.version}); "
                        "POST /admin/reload or SIGHUP serves the new one"
                    )
            except Exception as err:  # noqa: BLE001  (retried with back-off; the other copies serve)
                with self._state:
                    self._deaths[slot] += 1
                    delay = self._backoff(slot)
                    self._back_at[slot] = time.monotonic() + delay + self.load_seconds
                log.error("restarting a model process failed (%s); next try in %.1f s", err, delay)
                self._replenish()
                continue
            with self._state:
                closed = self._closed.is_set()
                if not closed:
                    self._slots[slot] = member
                    self._born[slot] = time.monotonic()
                    self._idle.append(member)
                    self.restarts += 1
                    self._state.notify_all()
            if closed:  # the pool closed while this one loaded
                member.close()
                return
            log.info("model process %d serves again after a restart (%.1f s to load%s)", member.pid,
                     time.monotonic() - started, ", imports done in advance" if spare is not None else "")
            self._replenish()
            if self._on_restart is not None:
                self._on_restart()
            return

    def take_spare(self) -> Spawned | None:
        """Hand the spare over to the pool that replaces this one (a reload then loads without
        the imports, and does not run two of them at once); this pool starts afresh if it has
        to restart a process later."""
        with self._state:
            spare, self._spare = self._spare, None
        return spare

    def _replenish(self) -> None:
        """A new spare, started after a restart used the last one (its imports then run beside
        the serving processes, not in the way of the restart)."""
        with self._state:
            if not self._keep_spare or self._spare is not None or self._closed.is_set():
                return
        spare = Spawned()  # not under the lock: starting a process takes a while
        with self._state:
            if self._spare is None and not self._closed.is_set():
                self._spare, spare = spare, None
        if spare is not None:
            spare.discard()

    # -- calls -------------------------------------------------------------------------------
    def _acquire(self) -> tuple[int, ModelProcess]:
        with self._state:
            while True:
                if self._closed.is_set():
                    raise ModelUnavailable("the model is being replaced", 1)
                while self._idle:
                    member = self._idle.pop()
                    slot = self._slots.index(member)
                    if member.alive():
                        return slot, member
                    self._lost(slot, member)  # the condition's lock is re-entrant
                if all(m is None for m in self._slots):
                    wait = min(self._retry_after(n) for n in range(len(self._slots)))
                    raise ModelUnavailable("the model process is restarting", wait)
                self._state.wait()  # every serving copy is busy: until one is free

    def _use(self, call: Callable[[ModelProcess], Any]) -> Any:
        slot, member = self._acquire()
        try:
            return call(member)
        except ModelProcessError as err:
            if member.alive():
                raise  # the call failed, the process is fine
            self._lost(slot, member)
            raise ModelUnavailable("the model process exited during the call; it is restarting",
                                   self._retry_after(slot)) from err
        finally:
            self._release(slot, member)

    def _release(self, slot: int, member: ModelProcess) -> None:
        """``member`` is done with its call: idle again unless it died or was replaced."""
        with self._state:
            if self._slots[slot] is member and member.alive():
                self._idle.append(member)
            self._state.notify_all()

    def answer(self, jobs: Sequence[Job]) -> list[Answer]:
        return self._use(lambda m: m.answer(jobs))

    async def answer_async(self, jobs: Sequence[Job]) -> list[Answer]:
        """``answer`` from the event loop: on an idle process without a thread; when every
        process is busy (or none serves), through ``answer`` on a thread, which waits or fails."""
        loop = asyncio.get_running_loop()
        with self._state:
            member = next((m for m in reversed(self._idle) if m.alive()), None)
            if member is None or self._closed.is_set():
                member = None
            else:
                self._idle.remove(member)
                slot = self._slots.index(member)
        if member is None:
            return await loop.run_in_executor(None, self.answer, jobs)
        try:
            return await member.answer_async(jobs)
        except ModelProcessError as err:
            if member.alive():
                raise
            await loop.run_in_executor(None, self._lost, slot, member)  # reaps the process: off the loop
            raise ModelUnavailable("the model process exited during the call; it is restarting",
                                   self._retry_after(slot)) from err
        finally:
            self._release(slot, member)

    def score(self, pairs: Sequence[tuple[str, str]], events: dict[str, list[StoredEvent]]) -> list[float]:
        return self._use(lambda m: m.score(pairs, events))

    def rate(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        return self._use(lambda m: m.rate(pairs))

    def close(self) -> None:
        """Stop every process, each after its call in flight; restarts under way are abandoned."""
        with self._state:
            self._closed.set()
            members = [m for m in self._slots if m is not None]
            spare, self._spare = self._spare, None
            self._state.notify_all()
        if spare is not None:
            spare.discard()
        for member in members:
            member.close()


__all__ = ["Job", "ModelLoadError", "ModelPool", "ModelProcess", "ModelProcessError", "ModelUnavailable", "Spawned"]
