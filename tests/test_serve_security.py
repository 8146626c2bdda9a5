"""Probes of a real server on loopback, one group per finding of the security review:

1. a killed model process is replaced, with 503 + Retry-After meanwhile and never a 500;
2. per-user answers need a key with the right scope (401 / 403), public-read only when asked;
3. hostile input (NaN, Infinity, 1e400, lone surrogates, bools for ints, out-of-range values)
   gets a 422 whose body is valid UTF-8 JSON that does not echo the input;
4. no response or log line shows an API key or a database password;
5. oversized chunked bodies get 413, half-sent bodies 408.

Every response of the module is recorded; none may be a 500."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ServedModel as Served
from test_serve import TINY, rated_cycle

from promptrec.data import leave_one_out
from promptrec.models.p5.config import RunConfig
from promptrec.models.p5.model import P5Recommender

ADMIN = Served.key  # PROMPTREC_API_KEY: every scope
READER = "reader-key-0123456789"
WRITER = "writer-key-0123456789"
DB_PASSWORD = "db-pass-QX7"  # in the store URL's query string: must never be shown
SECRETS = (ADMIN, READER, WRITER, DB_PASSWORD)
SEEN: list[httpx.Response] = []  # every response of this module


def record(response: httpx.Response) -> None:
    SEEN.append(response)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    rec = P5Recommender(RunConfig().update({**TINY, "tasks.weights": {"sequential": 1.0, "yesno": 0.5, "rating": 0.5}}))
    rec.fit(leave_one_out(rated_cycle()), progress=False).save_pretrained(root / "full")
    return root / "full"


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory) -> Iterator[Served]:
    """A server with an admin key (env), a read-only and a write-only key (key file), a store URL
    with a password in its query string, and a 1 s body deadline."""
    tmp = tmp_path_factory.mktemp("served")
    keys = tmp / "keys"
    keys.write_text(f"# scopes key\nread {READER}\nwrite {WRITER}\n")
    database = f"sqlite:///{tmp / 'feedback.db'}?password={DB_PASSWORD}"
    server = Served(model_dir, database, "--key-file", str(keys), "--body-timeout", "1", log=tmp / "server.log")
    yield server
    server.stop()
    log = (tmp / "server.log").read_text()
    assert log and not [s for s in SECRETS if s in log], "a secret in the server's log"


def client(served: Served, key: str | None = None, bearer: bool = False) -> httpx.Client:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"} if bearer else {"X-API-Key": key}
    return httpx.Client(base_url=served.url, timeout=60, headers=headers, event_hooks={"response": [record]})


CHAT = {"model": "promptrec", "messages": [{"role": "user", "content": "I am user 3"}]}
PAIRS = {"pairs": [{"user_id": "user3", "item_id": "item4"}]}
EVENT = {"event_id": "e-1", "user_id": "user3", "item_id": "item4", "type": "skip", "timestamp": 1e9}
READS = [("POST", "/recommend", {"user_id": "user3", "k": 5}), ("POST", "/score", PAIRS), ("POST", "/rate", PAIRS),
         ("POST", "/v1/chat/completions", CHAT)]


# -- 2. access ---------------------------------------------------------------------------------
def test_per_user_endpoints_need_a_read_key(served) -> None:
    with client(served) as anonymous, client(served, "not-a-key-at-all-123") as wrong:
        for c in (anonymous, wrong):
            for method, path, body in READS:
                r = c.request(method, path, json=body)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, r.text)
            assert c.post("/feedback", json={"events": [EVENT]}).status_code == 401
            assert c.post("/admin/reload", json={}).status_code == 401
            assert c.get("/info").status_code == 401
        # OpenAI clients read errors in OpenAI's shape.
        error = anonymous.post("/v1/chat/completions", json=CHAT).json()["error"]
        assert error["code"] == "invalid_api_key"
        # Open: liveness, readiness, metrics, the docs and the model list.
        for path in ("/health", "/ready", "/metrics", "/openapi.json", "/v1/models"):
            assert anonymous.get(path).status_code == 200, path


def test_scopes_are_enforced(served) -> None:
    with client(served, READER) as reader, client(served, WRITER, bearer=True) as writer:
        for method, path, body in READS:
            assert reader.request(method, path, json=body).status_code == 200, path
            r = writer.request(method, path, json=body)
            assert r.status_code == 403 and "read scope" in r.text, path
        assert reader.post("/feedback", json={"events": [EVENT]}).status_code == 403
        assert writer.post("/feedback", json={"events": [EVENT]}).status_code == 200
        for c in (reader, writer):
            assert c.get("/info").status_code == 403
            assert c.post("/admin/reload", json={"model_dir": "/nowhere"}).status_code == 403
    with client(served, ADMIN, bearer=True) as admin:  # the admin key has every scope
        assert admin.post("/recommend", json={"user_id": "user3", "k": 5}).status_code == 200
        assert admin.get("/info").status_code == 200


def test_the_demoted_flag_is_no_longer_public(served) -> None:
    """The finding: exclude_seen=false showed a skipped item as demoted to anyone."""
    body = {"user_id": "user3", "k": 3, "exclude_seen": False, "candidates": ["item4", "item5", "item6"]}
    with client(served) as anonymous, client(served, READER) as reader, client(served, WRITER) as writer:
        assert writer.post("/feedback", json={"events": [EVENT]}).status_code == 200
        assert anonymous.post("/recommend", json=body).status_code == 401
        items = reader.post("/recommend", json=body).json()["items"]
        assert {i["item_id"] for i in items if i["demoted"]} == {"item4"}


def test_public_read_is_explicit(model_dir, tmp_path) -> None:
    server = Served(model_dir, tmp_path / "feedback.db", "--public-read", log=tmp_path / "server.log")
    try:
        with client(server) as anonymous:
            for method, path, body in READS:
                assert anonymous.request(method, path, json=body).status_code == 200, path
            assert anonymous.post("/feedback", json={"events": [EVENT]}).status_code == 401
            assert anonymous.get("/info").status_code == 401
    finally:
        server.stop()
    assert "public-read mode" in (tmp_path / "server.log").read_text()


def test_no_key_means_no_server(model_dir, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PROMPTREC_API_KEY", "PROMPTREC_KEY_FILE")}
    cmd = [sys.executable, "-m", "promptrec.cli", "serve", str(model_dir), "--database", str(tmp_path / "f.db")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no API key" in flat(done.stderr) and "Traceback" not in done.stderr
    short = subprocess.run([*cmd, "--api-key", "short-key"], env=env, capture_output=True, text=True, timeout=120)
    assert short.returncode != 0 and "at least 12 characters" in flat(short.stderr) and "short-key" not in short.stderr


def flat(text: str) -> str:
    """Typer's error box as one line of words."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


# -- 3. input ----------------------------------------------------------------------------------
HOSTILE = [
    ("/recommend", b'{"user_id": "user3", "k": NaN}'),
    ("/recommend", b'{"user_id": "user3", "k": Infinity}'),
    ("/recommend", b'{"user_id": "user3", "k": 1e400}'),
    ("/recommend", b'{"user_id": "user3", "k": true}'),
    ("/recommend", b'{"user_id": "user3", "k": "5"}'),
    ("/recommend", b'{"user_id": "\\ud800", "k": 5}'),
    ("/recommend", b'{"user_id": "\xed\xa0\x80", "k": 5}'),  # the surrogate as raw (invalid) UTF-8
    ("/recommend", b'{"user_id": "a\\u0000b", "k": 5}'),
    ("/recommend", b'{"\\udfff": 1}'),
    ("/recommend", b"[" * 50_000),
    ("/recommend", b'{"user_id": "user3", "k": ' + b"9" * 5000 + b"}"),
    ("/score", b'{"pairs": [{"user_id": "user3", "item_id": -Infinity}]}'),
    ("/feedback", b'{"events": [{"user_id": "u", "item_id": "item1", "type": "rating", "value": NaN}]}'),
    ("/feedback", b'{"events": [{"user_id": "u", "item_id": "item1", "type": "rating", "value": 1e308}]}'),
    ("/feedback", b'{"events": [{"user_id": "u", "item_id": "item1", "type": "click", "timestamp": 1e300}]}'),
    ("/feedback", b'{"events": [{"user_id": "u", "item_id": "item1", "type": "click", "timestamp": -1}]}'),
    ("/feedback", b'{"events": [{"user_id": "\\ud800", "item_id": "item1", "type": "click"}]}'),
    ("/feedback", b'{"events": [{"user_id": "u", "item_id": "item1", "type": "click", "timestamp": true}]}'),
    ("/admin/reload", b'{"model_dir": NaN}'),
    ("/v1/chat/completions", b'{"model": "promptrec", "messages": [{"role": "user", "content": "\\ud800"}]}'),
    ("/v1/chat/completions", b'{"model": "promptrec", "messages": [{"role": "user", "content": "hi"}], "k": true}'),
    ("/v1/chat/completions", b'{"model": "promptrec", "messages": [], "temperature": NaN}'),
]


@pytest.mark.parametrize(("path", "raw"), HOSTILE, ids=[f"{p}-{n}" for n, (p, _) in enumerate(HOSTILE)])
def test_hostile_input_is_a_clean_rejection(served, path, raw) -> None:
    with client(served, ADMIN) as c:
        r = c.post(path, content=raw, headers={"content-type": "application/json"})
    expected = 400 if path.startswith("/v1/") else 422  # OpenAI's status for a bad request
    assert r.status_code == expected, r.text
    text = r.content.decode("utf-8")  # valid UTF-8, and JSON
    assert '"input"' not in text  # FastAPI's default echoes the input there
    json.loads(text)
    for needle in ("1e400", "1e308", "1e300", "\\ud800", "\\udfff", "\\u0000", "9" * 50):
        assert needle not in text, f"the error echoes {needle}: {text}"


def test_documented_ranges_are_accepted(served) -> None:
    with client(served, ADMIN) as c:
        ok = {"events": [{"user_id": "u", "item_id": "item1", "type": "rating", "value": 4.5, "timestamp": 1.7e9},
                         {"user_id": "u", "item_id": "item2", "type": "rating", "value": 100, "timestamp": 0}]}
        assert c.post("/feedback", json=ok).status_code == 200
        assert c.post("/recommend", json={"user_id": "😀 ñ", "k": 20}).status_code == 200
        assert c.post("/recommend", json={"user_id": "u", "k": 21}).status_code == 422  # --max-k 20


# -- 5. bodies ---------------------------------------------------------------------------------
def test_chunked_body_over_the_limit_is_413(served) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the transfer is chunked
        yield b'{"user_id": "user3", "history": ['
        for _ in range(1200):
            yield b'"item1", ' * 100
        yield b'"item1"]}'

    with client(served, ADMIN) as c:
        r = c.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over 1048576 bytes" in r.json()["detail"]


def test_half_a_body_times_out(served) -> None:
    host, port = "127.0.0.1", served.port
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"X-API-Key: " + ADMIN.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"user_id\": ")
        started = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert time.monotonic() - started < 5  # --body-timeout 1


# -- 4. secrets --------------------------------------------------------------------------------
def test_info_masks_the_store_password(served) -> None:
    with client(served, ADMIN) as c:
        info = c.get("/info").json()
    assert "password=***" in info["store"] and DB_PASSWORD not in json.dumps(info)


def test_startup_error_masks_passwords(model_dir) -> None:
    url = f"postgresql+psycopg://bob:{DB_PASSWORD}@127.0.0.1:1/db?sslpassword=q-{DB_PASSWORD}&connect_timeout=2"
    cmd = [sys.executable, "-m", "promptrec.cli", "serve", str(model_dir), "--database", url]
    env = {**os.environ, "PROMPTREC_API_KEY": ADMIN, "COLUMNS": "400"}  # an error box wide enough for no wrapping
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "cannot open feedback store" in flat(output) and "Traceback" not in output
    assert "bob:***@" in output and "sslpassword=***" in output and DB_PASSWORD not in output and ADMIN not in output


# -- 1. healing --------------------------------------------------------------------------------
def test_a_killed_model_process_is_replaced(model_dir, tmp_path) -> None:
    server = Served(model_dir, tmp_path / "feedback.db", log=tmp_path / "server.log")
    try:
        with client(server, ADMIN) as c:
            old = c.get("/info").json()["model_pids"]
            os.kill(old[0], signal.SIGKILL)
            deadline = time.monotonic() + 10
            while (ready := c.get("/ready")).status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert ready.status_code == 503 and int(ready.headers["retry-after"]) >= 1
            info = c.get("/info").json()
            assert info["model_pids"] == [] and info["model_processes"][0]["state"] == "restarting"
            # Requests that need the model: 503 with Retry-After until the new process serves.
            statuses = []
            n = 0
            while time.monotonic() < deadline + 60:
                n += 1
                r = c.post("/recommend", json={"user_id": f"nobody-{n}", "k": 3})  # never cached
                statuses.append(r.status_code)
                if r.status_code == 200:
                    break
                assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
                if n == 1:
                    chat = c.post("/v1/chat/completions", json=CHAT)
                    assert chat.status_code == 503 and chat.json()["error"]["code"] == "model_restarting"
                    assert c.post("/score", json=PAIRS).status_code == 503
                time.sleep(0.05)
            assert statuses[0] == 503 and statuses[-1] == 200
            assert c.get("/ready").status_code == 200
            info = c.get("/info").json()
            assert info["model_restarts"] == 1 and info["model_pids"] and info["model_pids"] != old
            assert "promptrec_model_restarts_total 1.0" in c.get("/metrics").text
    finally:
        server.stop()
    assert "exited (exit code -9)" in (tmp_path / "server.log").read_text()


def test_fuzzing_every_route_finds_no_server_error(served) -> None:
    """A short run of bench/serve_fuzz.py: schemathesis cases for every operation, with hostile
    values put into the bodies and every identity (no key, a wrong one, the key both ways)."""
    spec = importlib.util.spec_from_file_location("serve_fuzz", Path(__file__).parents[1] / "bench" / "serve_fuzz.py")
    serve_fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_fuzz)
    tally = serve_fuzz.Tally()
    serve_fuzz.fuzz(served.url, ADMIN, examples=15, seed_=1, tally=tally)
    assert tally.requests >= 200 and tally.mutated >= 50 and len(tally.statuses) == 12
    assert not tally.server_errors, tally.server_errors[:3]
    assert sum(c["401"] for c in tally.statuses.values()) > 0  # the identities without a key were refused


def test_no_response_was_a_500_or_showed_a_secret() -> None:
    """Runs last in the module: over every response recorded above."""
    assert len(SEEN) > 50
    assert not [r for r in SEEN if r.status_code >= 500 and r.status_code != 503]
    for r in SEEN:
        text = r.content.decode("utf-8", "replace") + str(r.headers)
        assert not [s for s in SECRETS if s in text], r.request.url
