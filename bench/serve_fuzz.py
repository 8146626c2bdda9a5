"""Fuzzing every route of ``promptrec serve`` from its OpenAPI schema: no request may get a 5xx.

schemathesis generates requests for each operation of ``/openapi.json`` with its default
strategies, in both of its modes (``positive``: bodies the schema allows; ``negative``: bodies
it does not). On top of that, with hypothesis, about half of the bodies get one hostile value
put at a random place: NaN, Infinity, -Infinity, ``1e400`` (a float overflow), a lone UTF-16
surrogate, NUL, arbitrary Unicode text, a bool where a number goes, huge integers. Every request
is sent with one of four identities, in turn (not drawn: hypothesis favours the first of a list):
no key, a wrong key, the key as ``X-API-Key`` and the key as ``Authorization: Bearer``.

Counted per operation: requests and status codes; ``server_errors`` (5xx) must be 0. Reloads
that would load the served model again (``/admin/reload`` without a directory, with the key)
are not sent: one takes seconds, and the test suite covers them; reloads naming a directory are.

    python bench/serve_fuzz.py                                 # 5,000+ requests (about 300 per op and mode)
    python bench/serve_fuzz.py --examples 30 --results /tmp/fuzz.json
    python bench/serve_fuzz.py --url http://127.0.0.1:8000     # a running server (PROMPTREC_API_KEY: its admin key)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "runs" / "quickstart" / "model"
OVERFLOW = "\x01overflow\x01"  # stands for 1e400, which json.dumps cannot write: replaced after dumping

# Values that must never reach a handler, or must be refused there with a 4xx.
HOSTILE = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), OVERFLOW, True, False, None, 10**30, -(10**30),
                     -1, 0, 1e308, "", "\x00", "\ud800", "\udfff", "\ud83d", "a\ud800b"]),
    st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=40),
    st.lists(st.integers(0xD800, 0xDFFF).map(chr), min_size=1, max_size=3).map("".join),
)
IDENTITIES = ("none", "wrong", "x-api-key", "bearer")


def _slots(body: Any) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) of a JSON value, in a fixed order."""
    out: list[tuple[Any, Any]] = []
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in sorted(node, key=str):
                out.append((node, key))
                stack.append(node[key])
        elif isinstance(node, list):
            for index, item in enumerate(node):
                out.append((node, index))
                stack.append(item)
    return out


def mutate(body: Any, where: int, value: Any, rename: bool) -> Any:
    """``body`` with ``value`` at its slot number ``where`` (modulo the slots); ``rename``: put it
    under a new key instead, when the slot's container is an object and ``value`` is text."""
    body = json.loads(json.dumps(body, default=str))  # a copy, safe to change
    slots = _slots(body)
    if not slots:
        return value
    container, key = slots[where % len(slots)]
    if rename and isinstance(container, dict) and isinstance(value, str):
        container[value] = container.pop(key)
    else:
        container[key] = value
    return body


def encode(body: Any) -> bytes:
    """JSON as a hostile client writes it: NaN and Infinity as Python writes them, lone surrogates
    as \\u escapes (ensure_ascii), and 1e400 spelled out."""
    text = json.dumps(body, allow_nan=True, ensure_ascii=True, default=str)
    return text.replace(json.dumps(OVERFLOW), "1e400").encode()


class Tally:
    def __init__(self) -> None:
        self.statuses: dict[str, Counter] = {}
        self.server_errors: list[dict[str, Any]] = []
        self.transport_errors: list[str] = []
        self.skipped = 0
        self.mutated = 0
        self.cases = 0
        self.empty: list[str] = []  # operation and mode without any case to generate

    def add(self, label: str, status: int) -> None:
        self.statuses.setdefault(label, Counter())[str(status)] += 1

    @property
    def requests(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())


def fuzz(url: str, key: str, examples: int, seed_: int, tally: Tally, log: Any = None) -> None:
    """``examples`` hypothesis examples per operation and schemathesis mode, against ``url``."""
    import schemathesis
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    with httpx.Client(base_url=url, timeout=120) as client:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz_operation(client, key, operation, mode, examples, seed_, tally)
                if log is not None:
                    print(f"{operation.method.upper()} {operation.path} {mode.value}: {tally.requests} requests so far",
                          file=log, flush=True)


def fuzz_operation(client: httpx.Client, key: str, operation: Any, mode: Any, examples: int, seed_: int,
                   tally: Tally) -> None:
    from schemathesis.core import NOT_SET

    label = f"{operation.method.upper()} {operation.path}"

    @seed(seed_)
    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), hostile=st.booleans(), where=st.integers(0, 10_000),
           value=HOSTILE, rename=st.booleans())
    def run(case: Any, hostile: bool, where: int, value: Any, rename: bool) -> None:
        identity = IDENTITIES[tally.cases % len(IDENTITIES)]
        tally.cases += 1
        body = None if case.body is NOT_SET else case.body
        raw = bytes(body) if isinstance(body, (bytes, bytearray)) else None  # sent as generated
        if hostile and body is not None and raw is None:
            body = mutate(body, where, value, rename)
            tally.mutated += 1
        headers = {k: v for k, v in dict(case.headers or {}).items()
                   if k.lower() not in ("x-api-key", "authorization", "content-length", "host")}
        if identity == "wrong":
            headers["X-API-Key"] = "wrong-key-" + secrets.token_hex(4)
        elif identity == "x-api-key":
            headers["X-API-Key"] = key
        elif identity == "bearer":
            headers["Authorization"] = f"Bearer {key}"
        if (case.path == "/admin/reload" and identity in ("x-api-key", "bearer")
                and not (isinstance(body, dict) and isinstance(body.get("model_dir"), str))):
            tally.skipped += 1  # would load the served model again: seconds per request
            return
        content = None
        if body is not None:
            content = raw if raw is not None else encode(body)
            headers["content-type"] = case.media_type or "application/json"
        try:
            response = client.request(case.method.upper(), case.formatted_path, params=case.query or None,
                                      headers=headers, content=content)
        except (httpx.TransportError, UnicodeEncodeError, ValueError) as err:
            # A request httpx cannot send (a header with characters outside latin-1, ...)
            tally.transport_errors.append(f"{label}: {type(err).__name__}")
            return
        tally.add(label, response.status_code)
        if response.status_code >= 500:
            tally.server_errors.append({"operation": label, "status": response.status_code,
                                        "body": content[:300].decode("utf-8", "replace") if content else None,
                                        "response": response.text[:300]})

    try:
        run()
    except Unsatisfiable:  # nothing to negate in an operation without parameters or body
        tally.empty.append(f"{label} {mode.value}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="served model directory (default: %(default)s)")
    ap.add_argument("--url", default=None, help="fuzz this running server instead of starting one")
    ap.add_argument("--examples", type=int, default=300,
                    help="hypothesis examples per operation and mode (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the model process (default: %(default)s)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "serve_fuzz.json")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _serving import Server, machine_info

    if not args.url and not (args.model / "promptrec_config.json").is_file():
        ap.error(f"{args.model} is not a saved model: run `promptrec quickstart` or pass --model DIR")
    random.seed(args.seed)
    server = None
    workdir = None
    started = time.perf_counter()
    tally = Tally()
    try:
        if args.url:
            url, key = args.url.rstrip("/"), os.environ.get("PROMPTREC_API_KEY", "")
        else:
            workdir = Path(tempfile.mkdtemp(prefix="promptrec_fuzz_"))
            key = secrets.token_urlsafe(16)
            server = Server(args.model, workdir / "feedback.db", key, workdir / "server.log", args.threads)
            server.wait_ready()
            url = server.url
        fuzz(url, key, args.examples, args.seed, tally, log=sys.stderr)
        log_text = server.log_tail(10**7) if server is not None else ""
    finally:
        if server is not None:
            server.stop()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "benchmark": "serve_fuzz",
        "requests": tally.requests,
        "server_errors": len(tally.server_errors),
        "server_error_samples": tally.server_errors[:5],
        "statuses": {op: dict(sorted(c.items())) for op, c in sorted(tally.statuses.items())},
        "operations": len(tally.statuses),
        "bodies_with_a_hostile_value": tally.mutated,
        "reloads_not_sent": tally.skipped,
        "modes_without_cases": tally.empty,
        "unsendable": len(tally.transport_errors),
        "key_in_server_log": bool(log_text) and key in log_text,
        "tracebacks_in_server_log": log_text.count("Traceback"),
        "examples_per_operation_and_mode": args.examples,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine_info(("schemathesis", "hypothesis", "fastapi", "uvicorn")),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 1 if tally.server_errors or result["key_in_server_log"] else 0


if __name__ == "__main__":
    sys.exit(main())
