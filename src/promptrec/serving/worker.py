"""The model in a process of its own, behind the calls the HTTP server makes.

Why a process and not a thread: a small model's forward pass is mostly Python (module calls,
cache bookkeeping), and so is the HTTP stack. In one process both take turns on one interpreter
lock and the server uses one core however many it has; the model in a child process runs beside
the event loop instead of between its steps.

The parent talks to the child over a pipe, one JSON message each way per call (no pickle), one
call at a time. The child loads the model directory itself and answers with what the HTTP side
needs to know of it (version, catalogue, titles, capabilities). It exits when told to, or when
the pipe closes because the parent died, so a killed server leaves no model process behind.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import queue
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
        queries.append(Query(job["user_id"], state, job["k"], job["exclude_seen"], candidates))
    return [
        {"items": [[r.item_id, r.score, r.demoted] for r in a.items], "strategy": a.strategy, "version": a.model_version}
        for a in engine.answer(queries)
    ]


def _score(engine: Any, args: dict[str, Any]) -> list[float]:
    histories = {u: engine.user_state(u, _events(rows)).history for u, rows in args["events"].items()}
    return engine.score([(u, i, histories[u]) for u, i in args["pairs"]])


def _rate(engine: Any, args: dict[str, Any]) -> list[float]:
    return engine.rate([tuple(p) for p in args["pairs"]])


HANDLERS = {"answer": _answer, "score": _score, "rate": _rate}


def _child(conn: Any, model_dir: str, quantize: str | None, like_threshold: float, threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from .engine import Engine

    try:
        engine = Engine(model_dir, quantize, like_threshold)
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
class ModelProcess:
    """A loaded model directory in a child process; construction returns once it is loaded.

    Immutable as seen from the server, so a swap is one reference assignment. Calls are
    serialised (the child answers one at a time); ``close`` waits for the call in flight.
    """

    def __init__(
        self,
        model_dir: str | Path,
        quantize: str | None = None,
        like_threshold: float = LIKE_THRESHOLD,
        threads: int | None = None,
    ) -> None:
        started = time.perf_counter()
        self.model_dir = Path(model_dir)
        self.quantize = quantize
        # spawn, not fork: a forked copy of a process that already runs threads (the event loop's
        # pools, torch's) can inherit locks held by threads that do not exist in the child.
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_child, args=(child_conn, str(model_dir), quantize, like_threshold, threads),
            name="promptrec-model", daemon=True,
        )
        self._process.start()
        child_conn.close()  # the child's end lives in the child only: its death closes the pipe
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

    # -- calls -------------------------------------------------------------------------------
    def answer(self, jobs: Sequence[Job]) -> list[Answer]:
        payload = [
            {"user_id": j.user_id, "events": [astuple(e) for e in j.events], "explicit": j.explicit, "k": j.k,
             "exclude_seen": j.exclude_seen, "candidates": list(j.candidates) if j.candidates is not None else None}
            for j in jobs
        ]
        return [
            Answer([Ranked(i, s, d) for i, s, d in a["items"]], a["strategy"], a["version"])
            for a in self._call("answer", {"jobs": payload})
        ]

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
                raise ModelProcessError(f"the model process is gone (exit code {self._process.exitcode})") from err
            return self._receive(None, ModelProcessError)

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


class ModelPool:
    """``processes`` copies of one model directory, each in its own process; a call goes to an
    idle one. More than one pays off when the machine has cores to spare: batches then run side
    by side instead of one after another."""

    def __init__(self, model_dir: str | Path, processes: int = 1, **options: Any) -> None:
        """``options``: what each :class:`ModelProcess` takes besides the directory."""
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        started = time.perf_counter()
        with ThreadPoolExecutor(processes) as pool:  # loaded side by side
            futures = [pool.submit(ModelProcess, model_dir, **options) for _ in range(processes)]
        members, errors = [], []
        for future in futures:
            try:
                members.append(future.result())
            except Exception as err:  # noqa: BLE001  (the first error is raised below)
                errors.append(err)
        if errors:
            for member in members:
                member.close()
            raise errors[0]
        self.members: list[ModelProcess] = members
        self._idle: queue.SimpleQueue[ModelProcess] = queue.SimpleQueue()
        for member in members:
            self._idle.put(member)
        first = members[0]
        self.model_dir, self.quantize, self.version = first.model_dir, first.quantize, first.version
        self.catalogue, self.titles, self.capabilities = first.catalogue, first.titles, first.capabilities
        self.item_order, self.attributes, self.users = first.item_order, first.attributes, first.users
        self._grounding: Any = None
        self.load_seconds = round(time.perf_counter() - started, 3)

    def title(self, item_id: str) -> str | None:
        return self.titles.get(item_id)

    def grounding(self) -> Any:
        """The :class:`~promptrec.serving.conversation.Catalogue` of this model, built on first use (it
        needs rapidfuzz, an optional dependency) and kept as long as the model serves."""
        if self._grounding is None:
            from .conversation import Catalogue

            self._grounding = Catalogue(self.item_order, self.titles, self.attributes, self.users)
        return self._grounding

    def alive(self) -> bool:
        return all(m.alive() for m in self.members)

    @property
    def pids(self) -> list[int]:
        return [m.pid for m in self.members]

    def _use(self, call: Callable[[ModelProcess], Any]) -> Any:
        member = self._idle.get()
        try:
            return call(member)
        finally:
            self._idle.put(member)

    def answer(self, jobs: Sequence[Job]) -> list[Answer]:
        return self._use(lambda m: m.answer(jobs))

    def score(self, pairs: Sequence[tuple[str, str]], events: dict[str, list[StoredEvent]]) -> list[float]:
        return self._use(lambda m: m.score(pairs, events))

    def rate(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        return self._use(lambda m: m.rate(pairs))

    def close(self) -> None:
        for member in self.members:
            member.close()


__all__ = ["Job", "ModelLoadError", "ModelPool", "ModelProcess", "ModelProcessError"]
