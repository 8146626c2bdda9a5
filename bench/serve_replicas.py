"""Serving replicas on one PostgreSQL store: no acknowledged event lost while replicas are SIGKILLed.

Two (``--replicas``) ``promptrec serve`` processes share one PostgreSQL database (a throwaway
server on loopback, started here from the PostgreSQL binaries, durable settings: fsync and
synchronous commit on; or ``--database URL``; either way the run works in an empty schema of its
own). ``--clients`` threads post feedback to the replicas round-robin, each like a client behind
a load balancer that retries:

* every batch (1-5 events) has ids unique to the run; an id counts as *acknowledged* when a POST
  carrying it got a 2xx answer;
* a batch whose POST failed (connection refused: the replica is down; the connection dropped
  mid-request: it died with the request in flight; a timeout; a 5xx) is retried, same ids and
  contents, on the next replica, until a 2xx (what a load balancer does when it routes around a
  dead backend: the client-visible errors are counted before that retry, by kind and replica);
* deliberate duplicates: with probability ``--retry-rate`` a client re-posts one of its batches
  that was already acknowledged, to whichever replica is next (each such id must come back as a
  duplicate, never stored again), and with probability ``--shared-rate`` it posts a batch drawn
  from a pool of ids that every client posts (the same ids through both replicas at once).

Meanwhile the main thread, ``--kills`` times: waits ``--min-delay``..``--max-delay`` seconds
with every replica serving, sends SIGKILL to one replica (alternating A, B, A, ...; the number of
its requests in flight is recorded), checks that its model process exits on its own, restarts it
on the same port (the address a load balancer knows) and waits for its ``/ready``.

At the end (clients finish the batch in hand first) the store's rows are compared with the
ledger: acknowledged ids must all be stored (``lost`` = 0), nothing may be stored that no client
sent, no id may be stored twice (the unique constraint; counted all the same), and since every
batch is retried until acknowledged, stored and acknowledged ids must be the same set. Also
counted: ids acknowledged more than once (the deliberate retries, and retries after a failed
POST whose events had in fact been committed before the kill: the server answered those as
duplicates), and requests answered 5xx (must be 0). Exit status 1 unless all of that holds.

    python bench/serve_replicas.py                          # 2 replicas, 8 clients, 10 kills
    python bench/serve_replicas.py --kills 2 --results /tmp/replicas.json
    python bench/serve_replicas.py --database postgresql+psycopg://user:pw@db:5432/promptrec
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd
import sqlalchemy as sa
from _serving import Server, machine_info  # bench/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from postgres_server import ThrowawayPostgres, fresh_schema

TYPES = ("click", "purchase", "rating", "skip")


# -- the model served ----------------------------------------------------------------------------
def tiny_model(directory: Path, users: int = 200, items: int = 60) -> Path:
    """A popularity model of synthetic data: this bench is about the store, not the model."""
    from promptrec.core.recommender import build_recommender
    from promptrec.data import InteractionData, leave_one_out

    rng = random.Random(0)
    rows = [(f"user{u}", f"item{rng.randrange(items)}", t) for u in range(users) for t in range(5)]
    catalogue = pd.DataFrame({"item_id": [f"item{i}" for i in range(items)], "title": [f"thing {i}" for i in range(items)]})
    data = InteractionData(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]), catalogue)
    build_recommender("popularity", seed=0).fit(leave_one_out(data)).save_pretrained(directory)
    return directory


# -- clients -------------------------------------------------------------------------------------
@dataclass
class Ledger:
    """What the clients saw, shared by all client threads (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    events: dict[str, dict] = field(default_factory=dict)  # every attempted event, by id
    acks: Counter = field(default_factory=Counter)  # id -> 2xx answers that carried it
    acknowledgements: int = 0  # the sum of acks
    requests: int = 0
    acknowledged_requests: int = 0
    stored_reported: int = 0  # sum of "stored" over the 2xx answers
    duplicates_reported: int = 0  # sum of "duplicates" over the 2xx answers
    mismatched_ids: int = 0  # a 2xx whose event_ids are not the ids sent
    errors: Counter = field(default_factory=Counter)  # "kind@replica" -> count
    error_samples: list[str] = field(default_factory=list)
    failover_retries: int = 0  # posts of a batch whose previous post failed
    # New events of a failed post that its retry found stored: committed, then the replica died
    # before it answered (the retry is acknowledged as a duplicate, not stored twice).
    failover_duplicates: int = 0
    deliberate_retries: int = 0  # re-posts of an acknowledged batch
    deliberate_retry_events: int = 0
    deliberate_retry_stored: int = 0  # events stored again by such a re-post: must be 0
    shared_batches: int = 0
    in_flight: Counter = field(default_factory=Counter)  # replica -> requests in flight now


def error_kind(err: Exception) -> str:
    if isinstance(err, httpx.ConnectError):
        return "refused"  # never reached a server: the replica is down (or restarting)
    if isinstance(err, httpx.TimeoutException):
        return "timeout"
    return "dropped"  # the connection broke mid-request: the replica died with it in flight


def make_event(rng: random.Random, event_id: str, users: list[str], items: list[str]) -> dict:
    kind = rng.choice(TYPES)
    event = {"event_id": event_id, "user_id": rng.choice(users), "item_id": rng.choice(items), "type": kind,
             "timestamp": round(time.time(), 6)}
    if kind == "rating":
        event["value"] = float(rng.randint(1, 5))
    return event


class Client(threading.Thread):
    def __init__(self, number: int, urls: list[str], api_key: str, token: str, seed: int, users: list[str],
                 items: list[str], shared: list[str], args: argparse.Namespace, ledger: Ledger,
                 stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"client-{number}")
        self.number, self.urls, self.api_key, self.token = number, urls, api_key, token
        self.rng = random.Random(f"{seed}-client-{number}")  # str seeds hash deterministically
        self.users, self.items, self.shared, self.args = users, items, shared, args
        self.ledger, self.stop = ledger, stop
        self.next_replica = number % len(urls)
        self.acknowledged_batches: list[list[str]] = []
        self.gave_up = 0

    def batch(self) -> tuple[list[dict], str]:
        ledger, rng = self.ledger, self.rng
        if self.acknowledged_batches and rng.random() < self.args.retry_rate:
            ids = rng.choice(self.acknowledged_batches)
            with ledger.lock:
                return [ledger.events[i] for i in ids], "deliberate"
        if rng.random() < self.args.shared_rate:
            ids = rng.sample(self.shared, rng.randint(1, 5))
            with ledger.lock:  # the first client to use a shared id fixes its contents
                for i in ids:
                    ledger.events.setdefault(i, make_event(random.Random(i), i, self.users, self.items))
                return [ledger.events[i] for i in ids], "shared"
        events = [make_event(rng, f"{self.token}-c{self.number}-{secrets.token_hex(6)}", self.users, self.items)
                  for _ in range(rng.randint(1, 5))]
        with ledger.lock:
            for e in events:
                ledger.events[e["event_id"]] = e
        return events, "new"

    def run(self) -> None:
        clients = [httpx.Client(base_url=u, timeout=self.args.timeout, headers={"X-API-Key": self.api_key})
                   for u in self.urls]
        try:
            while not self.stop.is_set():
                self.post_until_acknowledged(clients, *self.batch())
        finally:
            for c in clients:
                c.close()

    def post_until_acknowledged(self, clients: list[httpx.Client], events: list[dict], why: str) -> None:
        ledger = self.ledger
        ids = [e["event_id"] for e in events]
        failed_before = False
        failures_in_a_row = 0
        deadline = time.monotonic() + self.args.give_up_after
        while True:
            replica = self.next_replica
            self.next_replica = (self.next_replica + 1) % len(clients)  # round-robin; after a failure: the next one
            with ledger.lock:
                ledger.requests += 1
                ledger.in_flight[replica] += 1
                ledger.failover_retries += failed_before
                ledger.shared_batches += why == "shared" and not failed_before
            try:
                response = clients[replica].post("/feedback", json={"events": events})
                failure = None if response.is_success else f"http_{response.status_code}"
            except httpx.TransportError as err:
                response, failure = None, error_kind(err)
            with ledger.lock:
                ledger.in_flight[replica] -= 1
                if failure is None:
                    body = response.json()
                    ledger.acknowledged_requests += 1
                    ledger.acks.update(ids)
                    ledger.acknowledgements += len(ids)
                    ledger.stored_reported += body["stored"]
                    ledger.duplicates_reported += body["duplicates"]
                    ledger.mismatched_ids += body["event_ids"] != ids
                    if failed_before and why == "new":
                        ledger.failover_duplicates += body["duplicates"]
                    if why == "deliberate":
                        ledger.deliberate_retries += 1
                        ledger.deliberate_retry_events += len(ids)
                        ledger.deliberate_retry_stored += body["stored"]
                else:
                    ledger.errors[f"{failure}@{'ABCDEFGH'[replica]}"] += 1
                    if failure.startswith("http_") and len(ledger.error_samples) < 5:
                        ledger.error_samples.append(f"{failure}: {response.text[:300]}")
            if failure is None:
                if why == "new":
                    self.acknowledged_batches.append(ids)
                return
            failed_before = True
            failures_in_a_row += 1
            if time.monotonic() > deadline:
                self.gave_up += 1
                return
            if failures_in_a_row % len(clients) == 0:
                time.sleep(0.1)  # every replica failed in turn: do not spin


# -- the store -----------------------------------------------------------------------------------
def store_facts(url: str) -> tuple[set[str], int, int]:
    """(distinct stored ids, rows, ids stored more than once)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            ids = set(conn.execute(sa.text("SELECT event_id FROM feedback_events")).scalars())
            rows = conn.execute(sa.text("SELECT count(*) FROM feedback_events")).scalar_one()
            twice = conn.execute(sa.text(
                "SELECT count(*) FROM (SELECT event_id FROM feedback_events GROUP BY event_id HAVING count(*) > 1) d"
            )).scalar_one()
    finally:
        engine.dispose()
    return ids, int(rows), int(twice)


def model_pids(server: Server, api_key: str) -> list[int]:
    try:
        return list(httpx.get(f"{server.url}/info", headers={"X-API-Key": api_key}, timeout=10).json()["model_pids"])
    except (httpx.HTTPError, ValueError, KeyError):
        return []


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- the benchmark -------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="served model directory (default: a tiny popularity model)")
    ap.add_argument("--database", default=None,
                    help="PostgreSQL URL (default: a throwaway server on loopback, from the PostgreSQL binaries)")
    ap.add_argument("--replicas", type=int, default=2, help="serve processes on the store (default: %(default)s)")
    ap.add_argument("--clients", type=int, default=8, help="client threads (default: %(default)s)")
    ap.add_argument("--kills", type=int, default=10, help="SIGKILLs of a replica (default: %(default)s)")
    ap.add_argument("--min-delay", type=float, default=1.0,
                    help="least time with every replica up before a kill, s (default: %(default)s)")
    ap.add_argument("--max-delay", type=float, default=3.0, help="most such time, s (default: %(default)s)")
    ap.add_argument("--retry-rate", type=float, default=0.1,
                    help="chance that a client re-posts an acknowledged batch (default: %(default)s)")
    ap.add_argument("--shared-rate", type=float, default=0.1,
                    help="chance that a batch comes from the pool of ids every client posts (default: %(default)s)")
    ap.add_argument("--shared-ids", type=int, default=500, help="size of that pool (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, s (default: %(default)s)")
    ap.add_argument("--give-up-after", type=float, default=300.0,
                    help="a client stops retrying a batch after this long, s (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per model process (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seeds kill delays and event contents (default: %(default)s)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "serve_replicas.json",
                    help="where the JSON goes (default: %(default)s)")
    args = ap.parse_args()
    if args.replicas < 2 or args.clients < 1 or args.kills < 0 or not 0 <= args.min_delay <= args.max_delay:
        ap.error("need --replicas >= 2, --clients >= 1, --kills >= 0 and 0 <= --min-delay <= --max-delay")

    started = time.perf_counter()
    machine = machine_info(("torch", "fastapi", "uvicorn", "httpx", "sqlalchemy", "psycopg"))
    workdir = Path(tempfile.mkdtemp(prefix="promptrec_replicas_"))
    postgres = None if args.database else ThrowawayPostgres(durable=True)
    servers: list[Server] = []
    result: dict = {}
    try:
        base_url = sa.make_url(args.database or postgres.url).set(drivername="postgresql+psycopg")
        url = fresh_schema(base_url, prefix="bench")
        engine = sa.create_engine(base_url)
        with engine.connect() as conn:
            machine["postgresql"] = conn.execute(sa.text("SHOW server_version")).scalar_one()
            settings = {name: conn.execute(sa.text(f"SHOW {name}")).scalar_one()
                        for name in ("fsync", "synchronous_commit", "max_connections")}
        engine.dispose()
        model = args.model or tiny_model(workdir / "model")
        histories = model / "histories.parquet"  # not every model keeps one; any user id is welcome
        users = (sorted(pd.read_parquet(histories, columns=["user_id"])["user_id"].unique()) if histories.is_file()
                 else [f"user{u}" for u in range(200)])
        items = sorted(pd.read_parquet(model / "items.parquet", columns=["item_id"])["item_id"].unique())
        api_key = secrets.token_urlsafe(16)
        token = secrets.token_hex(4)
        extra = ("--no-spare-process",)
        rng = random.Random(args.seed)

        start_s = time.perf_counter()
        servers = [Server(model, url, api_key, workdir / f"replica-{'ABCDEFGH'[n]}.log", args.threads, extra)
                   for n in range(args.replicas)]  # started together: they migrate the empty schema at once
        for s in servers:
            s.wait_ready()
        first_start_s = time.perf_counter() - start_s

        ledger = Ledger()
        stop = threading.Event()
        shared = [f"{token}-shared-{n}" for n in range(args.shared_ids)]
        clients = [Client(c, [s.url for s in servers], api_key, token, args.seed, users, items, shared, args,
                          ledger, stop) for c in range(args.clients)]
        load_started = time.perf_counter()
        for c in clients:
            c.start()

        kills: list[dict] = []
        for k in range(args.kills):
            delay = rng.uniform(args.min_delay, args.max_delay)
            time.sleep(delay)
            victim = k % args.replicas
            server = servers[victim]
            if not server.alive():
                raise RuntimeError(f"replica {'ABCDEFGH'[victim]} died on its own:\n{server.log_tail()}")
            pids = model_pids(server, api_key)
            with ledger.lock:
                flying = ledger.in_flight[victim]
                acked_before = ledger.acknowledgements
            server.kill(wait=True)
            killed_at = time.perf_counter()
            deadline = time.monotonic() + 30
            while any(alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.1)
            orphans = [p for p in pids if alive(p)]
            servers[victim] = Server(model, url, api_key, server.log_path, args.threads, extra, port=server.port)
            servers[victim].wait_ready()
            kills.append({"kill": k, "replica": "ABCDEFGH"[victim], "after_s": round(delay, 2),
                          "in_flight_to_it": flying, "model_processes_left": len(orphans),
                          "down_s": round(time.perf_counter() - killed_at, 1),
                          "acknowledged_meanwhile": ledger.acknowledgements - acked_before})
        time.sleep(args.min_delay)  # some load on the restarted replica too
        stop.set()
        for c in clients:
            c.join()
        load_s = time.perf_counter() - load_started

        stored, rows, stored_twice = store_facts(url)
        attempted = set(ledger.events)
        acknowledged = {i for i, n in ledger.acks.items() if n > 0}
        lost = sorted(acknowledged - stored)
        unknown = sorted(stored - attempted)  # stored but never sent: impossible unless the store is shared
        stored_unacknowledged = sorted(stored - acknowledged)
        errors = dict(sorted(ledger.errors.items()))
        by_kind = Counter()
        for key, n in ledger.errors.items():
            by_kind[key.split("@")[0]] += n
        http_5xx = sum(n for kind, n in by_kind.items() if kind.startswith("http_5"))
        gave_up = sum(c.gave_up for c in clients)
        orphans = sum(k["model_processes_left"] for k in kills)
        ok = (not lost and not unknown and stored_twice == 0 and rows == len(stored) and stored == acknowledged
              and http_5xx == 0 and ledger.deliberate_retry_stored == 0 and ledger.mismatched_ids == 0
              and gave_up == 0 and orphans == 0 and len(kills) == args.kills)
        result = {
            "benchmark": "serve_replicas_sigkill",
            "ok": ok,
            "replicas": args.replicas,
            "clients": args.clients,
            "kills": len(kills),
            "requests": ledger.requests,
            "acknowledged_requests": ledger.acknowledged_requests,
            "attempted_events": len(attempted),
            "acknowledged_events": len(acknowledged),
            "stored_events": len(stored),
            "stored_rows": rows,
            "lost": len(lost),
            "lost_ids": lost[:20],
            "stored_but_unacknowledged": len(stored_unacknowledged),
            "stored_never_sent": len(unknown),
            "stored_twice": stored_twice,
            "duplicates": {
                "ids_acknowledged_more_than_once": sum(1 for n in ledger.acks.values() if n > 1),
                "acknowledgements_beyond_the_first": sum(n - 1 for n in ledger.acks.values() if n > 1),
                "reported_by_server": ledger.duplicates_reported,
                "deliberate_retries": ledger.deliberate_retries,
                "deliberate_retry_events": ledger.deliberate_retry_events,
                "deliberate_retry_events_stored_again": ledger.deliberate_retry_stored,
                "shared_id_batches": ledger.shared_batches,
                "failover_retries": ledger.failover_retries,
                "failover_retry_new_events_already_stored": ledger.failover_duplicates,
            },
            "stored_reported_by_server": ledger.stored_reported,
            "client_errors": {
                "by_kind": dict(sorted(by_kind.items())),
                "by_kind_and_replica": errors,
                "http_5xx": http_5xx,
                "samples": ledger.error_samples,
                "how_counted": (
                    "one per failed POST, before the client retries the same batch on the next replica: "
                    "'refused' = connection refused by a replica that is down or restarting (no request reached "
                    "it; a load balancer's health check would route around it), 'dropped' = the connection "
                    "broke with the request in flight at the kill (a load balancer would answer 502; the client "
                    "retries), 'timeout', and 'http_NNN' for any non-2xx answer"),
                "batches_given_up": gave_up,
            },
            "mismatched_event_ids": ledger.mismatched_ids,
            "model_processes_left_after_kills": orphans,
            "per_kill": kills,
            "load_seconds": round(load_s, 1),
            "acknowledged_requests_per_s": round(ledger.acknowledged_requests / load_s, 1) if load_s else None,
            "first_start_seconds": round(first_start_s, 1),
            "seconds": round(time.perf_counter() - started, 1),
            "postgresql": {"server": "given with --database" if args.database else "throwaway, on loopback",
                           **settings},
            "model": str(args.model) if args.model else "tiny popularity model (synthetic, 200 users, 60 items)",
            "seed": args.seed,
            "retry_rate": args.retry_rate,
            "shared_rate": args.shared_rate,
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "machine": machine,
        }
    finally:
        for s in servers:  # an error or Ctrl-C mid-run: never leave a replica behind
            s.kill()
        if postgres is not None:
            postgres.stop()
        if result.get("ok"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"replica logs kept in {workdir}", file=sys.stderr)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    print("command:", result["command"])
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the cleanup on SIGTERM too
    sys.exit(main())
