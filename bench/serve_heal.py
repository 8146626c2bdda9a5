"""Self-healing under load: ``kill -9`` of the model process, repeatedly, while clients ask for
recommendations. Every death must be healed by the server itself (no reload, no SIGHUP), and no
request may get a 500: while the model restarts, requests that need it get 503 with Retry-After.

Starts ``promptrec serve`` (one model process), then ``--clients`` threads each send uncached
``POST /recommend`` requests (a fresh random explicit history each, so every one needs the
model) in a closed loop; after a 503 a client waits ``--retry-wait`` seconds, shorter than the
server's Retry-After, so that the first good answer after a restart is seen promptly. The main
thread, ``--kills`` times: waits until ``/ready`` answers 200 and the process has served for
``--serve-seconds`` (longer than the pool's ``STABLE_AFTER_S``, so a restart is immediate and the
numbers measure recovery, not back-off), reads the model process's PID from ``/info`` and sends
it SIGKILL.

Per kill: seconds from the kill to the first 200 of a request sent after it (the first good
answer), and until ``/info`` lists a new process and ``/ready`` answers 200; whether ``/ready``
said 503 in between, and ``/info`` then shows one more restart. Over the run: responses by status (500 must be 0), 503s with a Retry-After header,
and the ``promptrec_model_restarts_total`` counter.

    OMP_NUM_THREADS=1 python bench/serve_heal.py                       # 20 kills, 4 clients
    python bench/serve_heal.py --kills 3 --results /tmp/heal.json
"""

from __future__ import annotations

import argparse
import json
import os
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
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from _serving import Server, machine_info  # bench/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "runs" / "quickstart" / "model"


class Clients:
    """Closed-loop clients; every response is recorded as (sent, answered, status, retry_after)."""

    def __init__(self, url: str, key: str, users: list[str], items: list[str], n: int, retry_wait: float, seed: int):
        self.records: list[tuple[float, float, int | str, bool]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(url, key, users, items, retry_wait, random.Random(f"{seed}-{c}")),
                             daemon=True)
            for c in range(n)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _loop(self, url: str, key: str, users: list[str], items: list[str], retry_wait: float,
              rng: random.Random) -> None:
        with httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": key}) as client:
            while not self._stop.is_set():
                body = {"user_id": rng.choice(users), "k": 10, "history": rng.sample(items, rng.randint(5, 20))}
                sent = time.monotonic()
                try:
                    response = client.post("/recommend", json=body)
                    status: int | str = response.status_code
                    retry_after = "retry-after" in response.headers
                except httpx.TransportError as err:
                    status, retry_after = f"transport:{type(err).__name__}", False
                with self._lock:
                    self.records.append((sent, time.monotonic(), status, retry_after))
                if status != 200:
                    time.sleep(retry_wait)

    def first_good_after(self, moment: float) -> float | None:
        with self._lock:
            answered = [done for sent, done, status, _ in self.records if status == 200 and sent > moment]
        return min(answered) if answered else None


def info(url: str, key: str) -> dict[str, Any]:
    return httpx.get(f"{url}/info", headers={"X-API-Key": key}, timeout=30).json()


def wait_healed(url: str, key: str, dead: int, since: float, timeout: float) -> tuple[float | None, bool]:
    """Seconds from ``since`` until ``/info`` lists a model process other than ``dead`` and
    ``/ready`` answers 200 (polled every 20 ms; None if that did not happen), and whether
    ``/ready`` said 503 meanwhile."""
    said_503 = False
    while time.monotonic() - since < timeout:
        try:
            pids = info(url, key)["model_pids"]
            ready = httpx.get(f"{url}/ready", timeout=5).status_code
        except httpx.TransportError:
            pids, ready = [], 0
        said_503 = said_503 or ready == 503
        if pids and dead not in pids and ready == 200:
            return time.monotonic() - since, said_503
        time.sleep(0.02)
    return None, said_503


def stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None, "mean": None}
    array = np.array(values)
    return {"p50": round(float(np.percentile(array, 50)), 3), "max": round(float(array.max()), 3),
            "mean": round(float(array.mean()), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="served model directory (default: %(default)s)")
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs of the model process (default: %(default)s)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (default: %(default)s)")
    ap.add_argument("--serve-seconds", type=float, default=11.0,
                    help="how long the model serves between a recovery and the next kill (default: %(default)s)")
    ap.add_argument("--retry-wait", type=float, default=0.05,
                    help="a client's pause after a non-200 answer, seconds (default: %(default)s)")
    ap.add_argument("--heal-timeout", type=float, default=120.0, help="a death not healed by then fails the run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the model process (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "serve_heal.json")
    args = ap.parse_args()
    if not (args.model / "histories.parquet").is_file():
        ap.error(f"{args.model} is not a promptrec model directory: run `promptrec quickstart` or pass --model DIR")

    users = sorted(pd.read_parquet(args.model / "histories.parquet", columns=["user_id"])["user_id"].unique())
    items = sorted(pd.read_parquet(args.model / "items.parquet", columns=["item_id"])["item_id"].unique())
    machine = machine_info(("torch", "fastapi", "uvicorn"))
    machine["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    workdir = Path(tempfile.mkdtemp(prefix="promptrec_heal_"))
    key = secrets.token_urlsafe(16)
    server = Server(args.model, workdir / "feedback.db", key, workdir / "server.log", args.threads)
    kills: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        server.wait_ready()
        clients = Clients(server.url, key, users, items, args.clients, args.retry_wait, args.seed)
        clients.start()
        try:
            for n in range(args.kills):
                time.sleep(args.serve_seconds)
                before = info(server.url, key)
                pid = before["model_pids"][0]
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                ready, said_503 = wait_healed(server.url, key, pid, killed, args.heal_timeout)
                deadline = time.monotonic() + args.heal_timeout
                while (good := clients.first_good_after(killed)) is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                after = info(server.url, key)
                kills.append({
                    "kill": n + 1,
                    "pid": pid,
                    "new_pid": after["model_pids"][0] if after["model_pids"] else None,
                    "restarts": after["model_restarts"],
                    "first_good_answer_s": round(good - killed, 3) if good is not None else None,
                    "ready_again_s": round(ready, 3) if ready is not None else None,
                    "ready_said_503": said_503,
                })
                print(json.dumps(kills[-1]), file=sys.stderr, flush=True)
        finally:
            clients.stop()
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        restarts_metric = next((float(line.split()[-1]) for line in metrics.splitlines()
                                if line.startswith("promptrec_model_restarts_total")), None)
    finally:
        server.stop()
        log = server.log_tail(10**7)
        shutil.rmtree(workdir, ignore_errors=True)

    statuses = Counter(str(status) for _, _, status, _ in clients.records)
    healed = [k for k in kills if k["first_good_answer_s"] is not None and k["new_pid"] not in (None, k["pid"])
              and k["restarts"] == k["kill"]]
    result = {
        "benchmark": "serve_heal",
        "kills": len(kills),
        "healed_without_operator": len(healed),
        "first_good_answer_s": stats([k["first_good_answer_s"] for k in healed]),
        "ready_again_s": stats([k["ready_again_s"] for k in kills if k["ready_again_s"] is not None]),
        "ready_said_503_after_kill": sum(k["ready_said_503"] for k in kills),
        "responses": dict(sorted(statuses.items())),
        "responses_500": statuses.get("500", 0),
        "responses_503": statuses.get("503", 0),
        "responses_503_with_retry_after": sum(1 for _, _, s, r in clients.records if s == 503 and r),
        "restarts_metric": restarts_metric,
        "tracebacks_in_server_log": log.count("Traceback"),
        "per_kill": kills,
        "clients": args.clients,
        "serve_seconds_between_kills": args.serve_seconds,
        "client_retry_wait_s": args.retry_wait,
        "seconds": round(time.perf_counter() - started, 1),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    ok = len(healed) == args.kills and result["responses_500"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
