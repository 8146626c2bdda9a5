"""Durability of ``POST /feedback``: no acknowledged event is lost when the server is SIGKILLed.

The server promises to answer ``/feedback`` only after the feedback store committed the events.
This benchmark checks that promise the hard way, R rounds in a row on one SQLite file:

1. start ``promptrec serve`` as a child process on a free loopback port and wait for ``/ready``;
2. C client threads post feedback (1-5 events per request, click/purchase/rating/skip, each
   event with a unique ``event_id``); an id counts as *acknowledged* only when its POST got 200,
   a transport error (the server died mid-request) or any other status means *not acknowledged*;
3. after a random delay (0.5-2 s, from ``--seed``) the server gets SIGKILL while requests are in
   flight (the JSON reports how many were).

Afterwards the store is opened directly (``FeedbackStore``): every acknowledged id must be in it
(``lost`` must be 0, else the exit status is 1). Events stored but never acknowledged (killed
after the commit, before the answer) are fine: the client retries with the same id. The script
shows that too: it re-posts every attempted but unacknowledged event to a fresh server and checks
that the ones already stored come back as ``duplicates`` and that nothing is stored twice (the
store's count grows by exactly the number of distinct attempted ids; exit status 1 otherwise).

What this does not test: SIGKILL kills the process, not the machine, so the operating system's
page cache survives it. Power loss (what ``synchronous=FULL`` is for) needs a VM or real hardware.

    python bench/serve_durability.py                       # 25 rounds, 8 clients
    python bench/serve_durability.py --rounds 3 --results /tmp/durability.json
    python bench/serve_durability.py --model runs/quickstart/model --database /tmp/fb.db --seed 1
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import shlex
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd
from _serving import Server, machine_info  # bench/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "runs" / "quickstart" / "model"  # what `promptrec quickstart` leaves
TYPES = ("click", "purchase", "rating", "skip")


# -- clients -------------------------------------------------------------------------------------
@dataclass
class Ledger:
    """What the clients saw, shared by all client threads (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    events: dict[str, dict] = field(default_factory=dict)  # every attempted event, by id
    acknowledged: set[str] = field(default_factory=set)
    requests: int = 0
    transport_errors: int = 0
    refused: int = 0  # transport errors that were refused connections (after the kill)
    statuses: dict[str, int] = field(default_factory=dict)  # non-200 answers by status
    error_samples: list[str] = field(default_factory=list)
    duplicates_in_rounds: int = 0  # ids are unique per attempt, so any duplicate here is a server bug
    mismatched_ids: int = 0  # a 200 whose event_ids are not the ids sent
    in_flight: int = 0


def make_event(rng: random.Random, event_id: str, users: list[str], items: list[str]) -> dict:
    kind = rng.choice(TYPES)
    event = {"event_id": event_id, "user_id": rng.choice(users), "item_id": rng.choice(items), "type": kind,
             "timestamp": time.time()}
    if kind == "rating":
        event["value"] = float(rng.randint(1, 5))
    return event


def client_loop(url: str, api_key: str, tag: str, seed: int, users: list[str], items: list[str],
                ledger: Ledger, stop: threading.Event) -> None:
    rng = random.Random(f"{seed}-{tag}")  # str seeds are hashed deterministically (not PYTHONHASHSEED)
    n = 0
    with httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": api_key}) as client:
        while not stop.is_set():
            batch = []
            for _ in range(rng.randint(1, 5)):
                batch.append(make_event(rng, f"{tag}-{n}", users, items))
                n += 1
            ids = [e["event_id"] for e in batch]
            with ledger.lock:
                for e in batch:
                    ledger.events[e["event_id"]] = e
                ledger.requests += 1
                ledger.in_flight += 1
            try:
                response = client.post("/feedback", json={"events": batch})
            except httpx.TransportError as err:
                # The server died mid-request (or refused the connection after the kill): not
                # acknowledged. Keep going until told to stop, so a slow request does not end
                # this client's load early.
                with ledger.lock:
                    ledger.transport_errors += 1
                    ledger.refused += isinstance(err, httpx.ConnectError)  # never reached a server
                    ledger.in_flight -= 1
                continue
            with ledger.lock:
                ledger.in_flight -= 1
                if response.status_code == 200:
                    body = response.json()
                    ledger.acknowledged.update(ids)
                    ledger.duplicates_in_rounds += body["duplicates"]
                    ledger.mismatched_ids += body["event_ids"] != ids
                else:
                    key = str(response.status_code)
                    ledger.statuses[key] = ledger.statuses.get(key, 0) + 1
                    if len(ledger.error_samples) < 5:
                        ledger.error_samples.append(f"{response.status_code}: {response.text[:500]}")


# -- store checks --------------------------------------------------------------------------------
def stored_ids(database: Path, ids: list[str]) -> set[str]:
    from promptrec.serving.store import FeedbackStore

    with FeedbackStore(str(database)) as store:
        return set(store.has(ids))


def store_count(database: Path) -> int:
    from promptrec.serving.store import FeedbackStore

    with FeedbackStore(str(database)) as store:
        return int(store.count())


# -- the benchmark -------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="served model directory (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=25, help="start/kill cycles (default: %(default)s)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent client threads (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seeds kill delays and event contents (default: %(default)s)")
    ap.add_argument("--database", type=Path, default=None,
                    help="SQLite file, reused across rounds (default: a fresh temporary file)")
    ap.add_argument("--min-delay", type=float, default=0.5, help="shortest time to the kill, s (default: %(default)s)")
    ap.add_argument("--max-delay", type=float, default=2.0, help="longest time to the kill, s (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads (default: %(default)s)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "serve_durability.json",
                    help="where the JSON goes (default: %(default)s)")
    args = ap.parse_args()
    if args.rounds < 1 or args.clients < 1 or not 0 <= args.min_delay <= args.max_delay:
        ap.error("need --rounds >= 1, --clients >= 1 and 0 <= --min-delay <= --max-delay")
    if not (args.model / "promptrec_config.json").is_file():
        ap.error(f"{args.model} is not a promptrec model directory (no promptrec_config.json): run "
                 "`promptrec quickstart` to train the MovieLens-100K model, or pass --model DIR")

    started = time.perf_counter()
    machine = {**machine_info(("torch", "fastapi", "uvicorn", "httpx", "sqlalchemy")), "sqlite": sqlite3.sqlite_version}
    workdir = Path(tempfile.mkdtemp(prefix="promptrec_durability_"))
    database = args.database or workdir / "feedback.db"
    log_path = workdir / "server.log"
    api_key = secrets.token_urlsafe(16)
    # A reused --database may hold events from earlier runs: ids carry a per-run token so they
    # never collide with those, and counts below are relative to what was there before.
    run_token = secrets.token_hex(4)
    count_before = store_count(database) if database.exists() else 0
    users = sorted(pd.read_parquet(args.model / "histories.parquet", columns=["user_id"])["user_id"].unique())
    items = sorted(pd.read_parquet(args.model / "items.parquet", columns=["item_id"])["item_id"].unique())
    rng = random.Random(args.seed)
    ledger = Ledger()
    rounds: list[dict] = []
    kills = 0
    in_flight_at_kill = 0
    server: Server | None = None
    try:
        for round_ in range(args.rounds):
            server = Server(args.model, database, api_key, log_path, args.threads)
            server.wait_ready()
            delay = rng.uniform(args.min_delay, args.max_delay)
            acknowledged_before, attempted_before = len(ledger.acknowledged), len(ledger.events)
            stop = threading.Event()
            clients = [
                threading.Thread(target=client_loop, daemon=True, args=(
                    server.url, api_key, f"{run_token}-r{round_}-c{c}", args.seed, users, items, ledger, stop))
                for c in range(args.clients)
            ]
            for t in clients:
                t.start()
            time.sleep(delay)
            if not server.alive():  # it must die by our hand, not on its own
                raise RuntimeError(f"server died before the kill in round {round_}:\n{server.log_tail()}")
            with ledger.lock:
                flying = ledger.in_flight
            server.kill(wait=False)
            # Stop right after the signal, not before: clients are mid-request when it lands. Not
            # after the wait either: until the process is reaped, clients would spin on refused
            # connections, inflating the attempted count with requests no server ever saw.
            stop.set()
            server.proc.wait()
            kills += 1
            in_flight_at_kill += flying
            for t in clients:
                t.join()
            server = None
            rounds.append({"round": round_, "kill_after_s": round(delay, 3), "in_flight_at_kill": flying,
                           "acknowledged": len(ledger.acknowledged) - acknowledged_before,
                           "attempted": len(ledger.events) - attempted_before})

        # Every acknowledged id must be in the store.
        acknowledged = sorted(ledger.acknowledged)
        recovered = stored_ids(database, acknowledged)
        lost = sorted(set(acknowledged) - recovered)
        unacknowledged = sorted(set(ledger.events) - ledger.acknowledged)
        stored_unacknowledged = stored_ids(database, unacknowledged)
        count_after_rounds = store_count(database)

        # The client's retry: every unacknowledged event again, same id and contents, to a fresh
        # server. Those already committed must come back as duplicates, not be stored twice.
        retried_stored = retried_duplicates = 0
        retry_errors: list[str] = []
        if unacknowledged:
            server = Server(args.model, database, api_key, log_path, args.threads)
            server.wait_ready()
            with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": api_key}) as client:
                for start in range(0, len(unacknowledged), 100):
                    batch = [ledger.events[i] for i in unacknowledged[start:start + 100]]
                    response = client.post("/feedback", json={"events": batch})
                    if response.status_code != 200:
                        retry_errors.append(f"{response.status_code}: {response.text[:500]}")
                        continue
                    body = response.json()
                    retried_stored += body["stored"]
                    retried_duplicates += body["duplicates"]
            server.stop()
            server = None
        final_count = store_count(database)
        attempted = len(ledger.events)
        all_stored = len(stored_ids(database, sorted(ledger.events)))
        idempotent = (
            not retry_errors
            and retried_duplicates == len(stored_unacknowledged)
            and retried_stored == len(unacknowledged) - len(stored_unacknowledged)
            and final_count == count_before + attempted
            and all_stored == attempted
        )
        result = {
            "benchmark": "serve_feedback_durability_sigkill",
            "ok": not lost and idempotent,
            "rounds": args.rounds,
            "clients": args.clients,
            "kills": kills,
            "in_flight_at_kill": in_flight_at_kill,
            "requests": ledger.requests,
            "attempted": attempted,
            "acknowledged": len(acknowledged),
            "recovered": len(recovered),
            "lost": len(lost),
            "lost_ids": lost[:20],
            "unacknowledged": len(unacknowledged),
            "stored_unacknowledged": len(stored_unacknowledged),
            "transport_errors": ledger.transport_errors,
            "refused_connections": ledger.refused,
            "http_errors": ledger.statuses,
            "http_error_samples": ledger.error_samples,
            "duplicates_during_rounds": ledger.duplicates_in_rounds,
            "mismatched_event_ids": ledger.mismatched_ids,
            "retried": len(unacknowledged),
            "retried_stored": retried_stored,
            "retried_duplicates": retried_duplicates,
            "retry_errors": retry_errors,
            "count_before": count_before,
            "count_after_rounds": count_after_rounds,
            "final_count": final_count,
            "expected_final_count": count_before + attempted,
            "idempotent_retry": idempotent,
            "per_round": rounds,
            "seconds": round(time.perf_counter() - started, 1),
            "database": str(database),
            "server_log": str(log_path),
            "seed": args.seed,
            "server_threads": args.threads,
            "model": str(args.model),
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "machine": machine,
        }
    finally:
        if server is not None:  # an error or Ctrl-C mid-round: never leave a server behind
            server.kill()
    if result["ok"]:  # on failure the temporary database and the server log stay for a post-mortem
        shutil.rmtree(workdir, ignore_errors=True)
        result["server_log"] = None
        if args.database is None:
            result["database"] = "a temporary file, removed after the successful run"
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
