"""Load benchmark of ``POST /recommend``: throughput and client-measured latency per concurrency.

Starts ``promptrec serve`` as a child process (or talks to a running one with ``--url``), warms
it up, then for each concurrency level in ``--clients`` runs a closed loop: N clients, coroutines
of one event loop in this process, each with its own keep-alive connection, send a request as soon
as the previous answer arrived, for ``--seconds`` or until ``--requests`` were sent, whichever comes
first. Users are drawn uniformly at random (seeded) from the model's users; k = 10.

Two modes:

- ``cache``: plain ``{"user_id", "k"}`` requests. The server caches answers per (user, newest
  feedback, request), so after the first request of each user this mostly measures the HTTP
  stack and the cache (``cache_hit_ratio`` says how much).
- ``nocache``: every request carries a random explicit ``history`` of 5-20 catalogue items, so
  no two requests share a cache key and each one runs the model's constrained beam search (and
  the prompt path). This is the number that measures the model.

Per level: requests, errors (non-200 or transport), throughput, latency p50/p95/p99/max in ms
(wall clock around each request, in the client), the mean micro-batch size (from ``/info``),
the server's peak and current RSS (``VmHWM``/``VmRSS`` of its process; the peak is over the
server's whole life so far) and CPU, and this process's CPU. The client must not be the
bottleneck: its event loop runs on one core, so
``client_cpu_percent`` near 100 (one core) means the numbers partly measure the client; the
output warns when that happens. Target: p99 <= 25 ms at 8 clients without the answer cache.

The server's CPU and memory are those of its HTTP process and of its model processes (the model
runs in child processes, ``--model-processes`` of them, each with ``--threads`` torch threads,
default 1). On a machine with few cores the client and the server share them.

    python bench/serve_load.py                                  # levels 1 8 32, 20 s each
    python bench/serve_load.py --quantize int8                  # writes serve_load_int8.json
    python bench/serve_load.py --runtime onnx                   # writes serve_load_onnx.json
    python bench/serve_load.py --model-processes 2              # writes serve_load_p2.json
    python bench/serve_load.py --seconds 5 --clients 1 8 --results /tmp/load.json
    python bench/serve_load.py --url http://127.0.0.1:8000      # a server that is already running

Requests carry an API key (``X-API-Key``), as a backend's would: one made up for a server this
script starts, ``PROMPTREC_API_KEY`` for ``--url`` (it needs the read and admin scopes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd
from _serving import Server, cpu_probe_seconds, machine_info  # bench/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "runs" / "quickstart" / "model"  # what `promptrec quickstart` leaves
TARGET_P99_MS = 25.0
TARGET_CLIENTS = 8
CLIENT_CPU_WARN = 80.0  # percent of one core


# -- process measurements ------------------------------------------------------------------------
def memory_mib(pid: int) -> tuple[float, float] | None:
    """Peak (VmHWM) and current (VmRSS) resident memory of a process, MiB."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                fields[line[:5]] = int(line.split()[1]) / 1024
    except OSError:
        return None
    return (fields["VmHWM"], fields["VmRSS"]) if len(fields) == 2 else None


def server_memory(pids: dict[str, list[int]]) -> dict[str, float | None]:
    """Resident memory of the server's processes (the HTTP process and each model process),
    summed: peaks are per process over its whole life, so their sum is an upper bound."""
    per = {role: [m for m in (memory_mib(p) for p in group) if m] for role, group in pids.items()}
    if not per.get("http"):
        return {"server_peak_rss_mib": None, "server_rss_mib": None}
    every = [m for group in per.values() for m in group]
    return {
        "server_peak_rss_mib": round(sum(m[0] for m in every), 1),
        "server_rss_mib": round(sum(m[1] for m in every), 1),
        "http_peak_rss_mib": round(per["http"][0][0], 1),
        "model_peak_rss_mib": [round(m[0], 1) for m in per.get("model", [])],
    }


def cpu_seconds(pid: int) -> float | None:
    """user + system CPU time of a process (all its threads), from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces: skip past it
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- load generation -----------------------------------------------------------------------------
@dataclass
class Workload:
    users: list[str]
    items: list[str]
    mode: str  # "cache" or "nocache"
    k: int = 10

    def request(self, rng: random.Random) -> dict:
        body: dict[str, Any] = {"user_id": rng.choice(self.users), "k": self.k}
        if self.mode == "nocache":
            # A fresh explicit history makes the cache key unique, so the model runs every time.
            body["history"] = rng.sample(self.items, rng.randint(5, 20))
        return body


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    cached: int = 0


class ProtocolError(Exception):
    """An answer this client does not read (no Content-Length, chunked)."""


class Connection:
    """One keep-alive HTTP/1.1 connection that posts JSON, on an asyncio event loop.

    The client shares the server's cores here, so what it spends is taken from the server. All
    clients of a level run as coroutines of one event loop over raw streams (the request bytes
    written in one call, the answer read by its Content-Length): no thread per client, so no
    waits for the interpreter lock inside the measured latency, and a small fraction of the CPU
    of the standard library's ``http.client`` in threads."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname or "127.0.0.1", parts.port or 80, timeout
        fields = {"Host": f"{self.host}:{self.port}", **headers, "Content-Type": "application/json"}
        self.head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        payload = json.dumps(body).encode()
        async with asyncio.timeout(self.timeout):
            try:
                return await self._send(path, payload)
            except (OSError, asyncio.IncompleteReadError):
                self.close()  # a kept-alive connection the server closed: reopened once
                return await self._send(path, payload)

    async def _send(self, path: str, payload: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"POST {path} HTTP/1.1\r\n{self.head}Content-Length: {len(payload)}\r\n\r\n".encode()
                          + payload)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = None, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                close = value == "close"
        if length is None:
            self.close()
            raise ProtocolError(f"an answer without Content-Length (status {status})")
        body = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def client_loop(url: str, headers: dict[str, str], workload: Workload, rng: random.Random, deadline: float,
                      budget: list[int], tally: Tally) -> None:
    client = Connection(url, headers, timeout=60)
    try:
        while time.perf_counter() < deadline:
            if budget[0] <= 0:  # --requests is a budget shared by all clients of the level (one thread)
                return
            budget[0] -= 1
            body = workload.request(rng)  # built before the clock starts: not part of the latency
            start = time.perf_counter()
            try:
                status, text = await client.post("/recommend", body)
                elapsed = time.perf_counter() - start
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                    ProtocolError, ValueError) as err:
                client.close()
                tally.errors += 1
                tally.statuses["transport"] = tally.statuses.get("transport", 0) + 1
                if len(tally.error_samples) < 3:
                    tally.error_samples.append(f"transport: {err!r}")
                continue
            if status == 200:
                tally.latencies.append(elapsed)
                tally.cached += bool(json.loads(text)["cached"])
            else:
                tally.errors += 1
                key = str(status)
                tally.statuses[key] = tally.statuses.get(key, 0) + 1
                if len(tally.error_samples) < 3:
                    tally.error_samples.append(f"{status}: {text[:500].decode(errors='replace')}")
    finally:
        client.close()


async def run_clients(url: str, headers: dict[str, str], workload: Workload, clients: int, deadline: float,
                      budget: list[int], seed: int, tallies: list[Tally]) -> None:
    await asyncio.gather(*(
        client_loop(url, headers, workload, random.Random(f"{seed}-{workload.mode}-{clients}-{c}"), deadline, budget,
                    tallies[c])
        for c in range(clients)
    ))


def batch_counters(url: str, headers: dict[str, str]) -> tuple[int, int] | None:
    try:
        info = httpx.get(f"{url}/info", timeout=10, headers=headers).json()
        return int(info["batches"]), int(info["batched_requests"])
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def group_cpu(pids: list[int]) -> float | None:
    times = [cpu_seconds(p) for p in pids]
    return sum(times) if times and None not in times else None  # type: ignore[arg-type]


def run_level(url: str, headers: dict[str, str], workload: Workload, clients: int, seconds: float, max_requests: int,
              seed: int, pids: dict[str, list[int]]) -> dict[str, Any]:
    tallies = [Tally() for _ in range(clients)]
    budget = [max_requests if max_requests > 0 else 1 << 62]
    batches_before = batch_counters(url, headers)
    cpu_before = {role: group_cpu(group) for role, group in pids.items()}
    client_before = time.process_time()  # this process, all threads
    start = time.perf_counter()
    deadline = start + seconds
    run_loop(run_clients(url, headers, workload, clients, deadline, budget, seed, tallies))
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - client_before
    cpu_percent = {}
    for role, group in pids.items():
        after = group_cpu(group)
        before = cpu_before[role]
        cpu_percent[role] = round(100 * (after - before) / wall, 1) if after is not None and before is not None else None
    batches_after = batch_counters(url, headers)

    latencies = np.array([x for t in tallies for x in t.latencies]) * 1000
    ok = len(latencies)
    errors = sum(t.errors for t in tallies)
    statuses: dict[str, int] = {}
    for t in tallies:
        for key, n in t.statuses.items():
            statuses[key] = statuses.get(key, 0) + n

    def pct(q: float) -> float | None:
        return round(float(np.percentile(latencies, q)), 2) if ok else None

    mean_batch = None
    if batches_before and batches_after and batches_after[0] > batches_before[0]:
        mean_batch = round((batches_after[1] - batches_before[1]) / (batches_after[0] - batches_before[0]), 2)
    level: dict[str, Any] = {
        "clients": clients,
        "requests": ok + errors,
        "ok": ok,
        "errors": errors,
        "error_statuses": statuses,
        "error_samples": [s for t in tallies for s in t.error_samples][:3],
        "seconds": round(wall, 2),
        "throughput_rps": round(ok / wall, 1),
        "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99),
                       "max": round(float(latencies.max()), 2) if ok else None,
                       "mean": round(float(latencies.mean()), 2) if ok else None},
        "cache_hit_ratio": round(sum(t.cached for t in tallies) / ok, 3) if ok else None,
        "mean_batch_size": mean_batch,
        "client_cpu_percent": round(100 * client_cpu / wall, 1),
        # Percent of one core: the HTTP process, the model processes together, and their sum.
        "http_cpu_percent": cpu_percent.get("http"),
        "model_cpu_percent": cpu_percent.get("model"),
        "server_cpu_percent": (round(cpu_percent["http"] + cpu_percent["model"], 1)
                               if cpu_percent.get("http") is not None and cpu_percent.get("model") is not None
                               else None),
        **server_memory(pids),
    }
    if level["client_cpu_percent"] >= CLIENT_CPU_WARN:
        level["warning"] = (f"the client process used {level['client_cpu_percent']}% of a core: it may be the "
                            "bottleneck, so throughput and latency here are bounds, not the server's numbers")
    return level


def warm_up(url: str, headers: dict[str, str], workload: Workload, requests: int, seed: int) -> None:
    """Sequential requests before measuring: first-call costs (allocations, lazy imports, the
    first beam search) should not land in the first level's tail."""
    rng = random.Random(f"{seed}-warmup-{workload.mode}")

    async def sequential() -> None:
        client = Connection(url, headers, timeout=120)
        try:
            for _ in range(requests):
                status, text = await client.post("/recommend", workload.request(rng))
                if status != 200:
                    raise RuntimeError(f"warm-up request failed: {status} {text[:2000].decode(errors='replace')}")
        finally:
            client.close()

    run_loop(sequential())


def run_loop(coroutine) -> None:
    """Run on uvloop where installed (the server's own loop; less CPU per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


# -- the benchmark -------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                    help="served model directory; its users and items drive the requests (default: %(default)s)")
    ap.add_argument("--url", default=None, help="use this running server instead of starting one")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrency levels (default: 1 8 32)")
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of each level (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=0, help="at most this many requests per level (0: no limit)")
    ap.add_argument("--modes", nargs="+", choices=["cache", "nocache"], default=["cache", "nocache"])
    ap.add_argument("--warmup", type=int, default=30, help="warm-up requests per mode (default: %(default)s)")
    ap.add_argument("--quantize", choices=["int8"], default=None, help="passed to the server: int8 Linear layers")
    ap.add_argument("--runtime", choices=["default", "onnx"], default="default",
                    help="passed to the server: onnx runs the LM's ranking forward pass on ONNX Runtime")
    ap.add_argument("--batch-wait-ms", type=float, default=None, help="passed to the server (its default: 0)")
    ap.add_argument("--model-processes", type=int, default=1,
                    help="passed to the server: copies of the model, each in a process (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per model process of the server (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seeds users and histories (default: %(default)s)")
    ap.add_argument("--results", type=Path, default=None,
                    help="where the JSON goes (default: bench/results/serve_load.json, serve_load_int8.json with int8)")
    args = ap.parse_args()
    if any(c < 1 for c in args.clients) or args.seconds <= 0:
        ap.error("concurrency levels must be >= 1 and --seconds > 0")
    if not (args.model / "histories.parquet").is_file() or not (args.model / "items.parquet").is_file():
        ap.error(f"{args.model} is not a promptrec model directory (no histories.parquet/items.parquet): run "
                 "`promptrec quickstart` to train the MovieLens-100K model, or pass --model DIR")
    if args.url and (args.quantize or args.runtime != "default" or args.batch_wait_ms is not None
                     or args.model_processes != 1):
        ap.error("--quantize, --runtime, --batch-wait-ms and --model-processes configure a server this script "
                 "starts; not with --url")
    if args.model_processes < 1:
        ap.error("--model-processes must be >= 1")
    suffix = ("_int8" if args.quantize else "") + ("_onnx" if args.runtime == "onnx" else "") + (f"_p{args.model_processes}" if args.model_processes > 1 else "")
    results = args.results or ROOT / "bench" / "results" / f"serve_load{suffix}.json"

    machine = machine_info(("torch", "transformers", "fastapi", "uvicorn", "httpx"))
    users = sorted(pd.read_parquet(args.model / "histories.parquet", columns=["user_id"])["user_id"].unique())
    items = sorted(pd.read_parquet(args.model / "items.parquet", columns=["item_id"])["item_id"].unique())
    server: Server | None = None
    workdir: Path | None = None
    try:
        if args.url:
            url, server_pid = args.url.rstrip("/"), None
            headers = {"X-API-Key": os.environ.get("PROMPTREC_API_KEY", "")}
        else:
            workdir = Path(tempfile.mkdtemp(prefix="promptrec_load_"))
            extra = (["--quantize", args.quantize] if args.quantize else []) + ["--runtime", args.runtime] + (
                ["--batch-wait-ms", str(args.batch_wait_ms)] if args.batch_wait_ms is not None else []) + (
                ["--model-processes", str(args.model_processes)])
            key = secrets.token_urlsafe(16)
            headers = {"X-API-Key": key}
            server = Server(args.model, workdir / "feedback.db", key, workdir / "server.log", args.threads, extra)
            server.wait_ready()
            url, server_pid = server.url, server.proc.pid
        info = httpx.get(f"{url}/info", timeout=10, headers=headers).json()
        # The model runs in child processes of the server: their CPU and memory count too.
        pids = {"http": [server_pid], "model": list(info.get("model_pids", []))} if server_pid else {}
        modes: dict[str, list[dict]] = {}
        for mode in args.modes:
            workload = Workload(users, items, mode)
            warm_up(url, headers, workload, args.warmup, args.seed)
            modes[mode] = [run_level(url, headers, workload, c, args.seconds, args.requests, args.seed, pids)
                           for c in args.clients]
            if server is not None and server.proc.poll() is not None:
                raise RuntimeError(f"the server died during the {mode} run:\n{server.log_tail()}")
    finally:
        if server is not None:  # also on Ctrl-C: never leave a server behind
            server.stop()
        if workdir is not None:  # its (empty) feedback store and log: errors above quote the log
            shutil.rmtree(workdir, ignore_errors=True)

    def met(mode: str) -> bool | None:
        level = next((lv for lv in modes.get(mode, []) if lv["clients"] == TARGET_CLIENTS), None)
        if level is None or level["latency_ms"]["p99"] is None:
            return None
        return level["latency_ms"]["p99"] <= TARGET_P99_MS and level["errors"] == 0

    result = {
        "benchmark": "serve_load_recommend",
        "target": {"p99_ms": TARGET_P99_MS, "clients": TARGET_CLIENTS,
                   "met": {mode: met(mode) for mode in modes}},
        "k": 10,
        "users": len(users),
        "items": len(items),
        "seconds_per_level": args.seconds,
        "max_requests_per_level": args.requests or None,
        "warmup_requests": args.warmup,
        "server": {
            "url": args.url,  # None: started by this script
            "model": str(args.model),
            "model_version": info.get("model_version"),
            "quantize": info.get("quantize"),
            "runtime": info.get("runtime"),
            "batch_wait_ms": args.batch_wait_ms,  # None: the server's default (0 for `promptrec serve`)
            "model_processes": len(info.get("model_pids", [])) or None,
            "torch_threads_per_model_process": args.threads if not args.url else None,
        },
        "modes": modes,
        "seed": args.seed,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": {**machine, "cpu_probe_seconds_at_end": cpu_probe_seconds()},
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    failed = any(level["errors"] for levels in modes.values() for level in levels)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
