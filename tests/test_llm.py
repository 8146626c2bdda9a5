"""The ``llm`` recommender against real HTTP servers on loopback: a scripted OpenAI-compatible
endpoint whose "model" knows the cycle of the fixture (users walk items i, i+1, ...), and the same
server injecting faults (429, 500, time-outs, malformed JSON, empty choices)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("openai")
pytest.importorskip("rapidfuzz")

import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, PlainTextResponse  # noqa: E402

from promptrec.data import leave_one_out  # noqa: E402
from promptrec.evaluation.ranking import evaluate_rankings  # noqa: E402
from promptrec.models.llm import BudgetExceeded, Grounder, LLMError, LLMRecommender  # noqa: E402

TITLE = re.compile(r"thing number (\d+)")
KEY = "sk-test-0123456789abcdef-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeLLM:
    """An OpenAI-compatible server on a free loopback port. ``faults`` is a list consumed one
    per request ("429", "500", "timeout", "malformed", "empty"); once empty, requests are
    answered by ``answer(messages, body) -> str`` (with top log-probabilities when asked)."""

    def __init__(self, answer, n_items: int) -> None:
        self.answer, self.n_items = answer, n_items
        self.faults: list[str] = []
        self.requests: list[dict] = []
        self.auth: list[str] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append(body)
            self.auth.append(request.headers.get("authorization", ""))
            fault = self.faults.pop(0) if self.faults else None
            if fault in ("429", "500"):
                return JSONResponse({"error": {"message": "injected", "type": "server_error"}}, status_code=int(fault))
            if fault == "timeout":
                await asyncio.sleep(1.5)  # longer than the client's time-out in these tests
            if fault == "malformed":
                return PlainTextResponse("{not json", media_type="application/json")
            content = self.answer(body["messages"], body)
            choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
            if body.get("logprobs"):
                first = content.splitlines()[0].strip()
                tops = [{"token": t, "logprob": lp, "bytes": None} for t, lp in _label_logprobs(content)]
                choice["logprobs"] = {"content": [{"token": first, "logprob": tops[0]["logprob"], "bytes": None, "top_logprobs": tops}]}
            return {
                "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [] if fault == "empty" else [choice],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "FakeLLM":
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(5)


def _label_logprobs(content: str) -> list[tuple[str, float]]:
    labels = [ln.strip() for ln in content.splitlines() if ln.strip()]
    return [(lab, -0.5 * j) for j, lab in enumerate(labels)]


def cycle_answer(n_items: int):
    """Knows the cycle: the successors of the last history item, by title; plus noise the
    grounding must handle (a history item, a made-up title, a repeat)."""

    def answer(messages, body):
        history = messages[-1]["content"].split("oldest first:\n")[1].split("\n\n")[0]
        seen = [int(x) for x in TITLE.findall(history)] or [n_items - 1]
        succ = [f"thing number {(seen[-1] + j) % n_items}" for j in (1, 2, 3)]
        lines = [succ[0], f"thing number {seen[0]}", "The Unknown Film (2031)", succ[0], *succ[1:]]
        return "\n".join(f"{n}. {t}" for n, t in enumerate(lines, 1))

    return answer


def rerank_answer(messages, body):
    """Orders the labelled candidates by closeness to the successor of the last history item."""
    text = messages[-1]["content"]
    last = int(TITLE.findall(text.split("Candidates:")[0])[-1])
    cands = re.findall(r"^([A-Z]{1,2})\. thing number (\d+)$", text, flags=re.MULTILINE)
    order = sorted(cands, key=lambda c: (int(c[1]) - last - 1) % 1000)
    return "\n".join(lab for lab, _ in order)


@pytest.fixture(scope="module")
def split():
    from conftest import cyclic_data

    return leave_one_out(cyclic_data(n_users=30, n_items=20))


def llm(server: FakeLLM, tmp_path: Path, **params) -> LLMRecommender:
    base = dict(base_url=server.url, model="fake", cache_dir=str(tmp_path / "cache"), api_key_env="PROMPTREC_TEST_KEY",
                timeout=0.5, backoff=0.01)
    base.update(params)
    backoff = base.pop("backoff")
    rec = LLMRecommender(**base)
    rec.client.backoff = backoff
    return rec


# ------------------------------------------------------------------------------------ grounding
def test_grounding_maps_titles_ids_labels_and_codes():
    titles = {"1": "Star Wars (1977)", "2": "Fargo (1996)", "3": "Toy Story (1995)", "4": "Star Trek: Generations (1994)"}
    g = Grounder(titles, threshold=85)
    out = g.ground("1. Star Wars\n2) fargo (1996)\n- Toy Story (id 3)\n* The Unknown Film (2031)\n5. Fargo")
    assert out.items == ["1", "2", "3"] and out.named == 5 and out.invalid == 1 and out.duplicates == 1
    assert g.ground("id: 4").items == ["4"]
    assert g.ground("").parse_failure and g.ground("nothing here at all").parse_failure
    # Candidate labels, alone, with their title, or comma-separated on one line.
    lab = {"A": "2", "B": "1", "C": "3"}
    assert g.ground("B\nA. Fargo (1996)\n[C]", lab).items == ["1", "2", "3"]
    assert g.ground("C, B, A", lab).items == ["3", "1", "2"]
    # Labels on one line, one token each; a title that starts with a label-like word stays whole.
    assert g.ground(" C B A\n", lab).items == ["3", "1", "2"] and g.ground("C B B", lab).duplicates == 1
    assert Grounder({"9": "A Clockwork Orange (1971)"}).ground("A Clockwork Orange", {"A": "9", "B": "8"}).items == ["9"]
    # Item codes, however the tokenizer spaced them; an unknown code is invalid.
    gc = Grounder(titles, codes={"<a_1><b_2>": "1", "<a_1><b_3>": "2"})
    out = gc.ground("<a_1> <b_3> <a_1><b_2> <a_9><b_9>")
    assert out.items == ["2", "1"] and out.invalid == 1


# ---------------------------------------------------------------------------------- recommending
def test_generate_mode_grounds_drops_and_fills_and_keeps_the_contract(split, tmp_path, monkeypatch):
    from conftest import assert_recommender_contract

    monkeypatch.setenv("PROMPTREC_TEST_KEY", KEY)
    with FakeLLM(cycle_answer(20), 20) as server:
        rec = llm(server, tmp_path).fit(split)
        users = list(split.test["user_id"][:10])
        recs = rec.recommend(users, k=5)
        hist = split.history("test")
        for u, g in recs.groupby("user_id", sort=False):
            succ = [(int(hist[u][-1][4:]) + j) % 20 for j in (1, 2, 3)]
            # The successors, grounded from titles, lead; history items and repeats are gone.
            assert list(g["item_id"][:3]) == [f"item{i}" for i in succ]
        s = rec.stats()
        assert s["llm_users"] == 10 and s["invalid_answer_rate"] == pytest.approx(1 / 6)
        assert s["history_dropped"] == 10 and s["duplicates_dropped"] == 10 and s["parse_failure_rate"] == 0
        assert s["fill_rate"] == pytest.approx(2 / 5) and s["requests"] == 10 and s["prompt_tokens"] == 100
        summary, _ = evaluate_rankings(rec, split, k=5, metrics=["HR@1"])
        assert summary["HR@1"] == 1.0  # the scripted model knows the cycle
        assert_recommender_contract(rec, split, tmp_path / "saved")
        assert all(a == f"Bearer {KEY}" for a in server.auth)  # the key reached the server


def test_second_run_is_answered_from_the_cache(split, tmp_path):
    with FakeLLM(cycle_answer(20), 20) as server:
        users = list(split.test["user_id"])
        first = llm(server, tmp_path).fit(split)
        a = first.recommend(users, k=5)
        assert first.stats()["requests"] == len(users)
        again = llm(server, tmp_path).fit(split)
        b = again.recommend(users, k=5)
        assert again.stats()["requests"] == 0 and again.stats()["cache_hits"] == len(users)
        assert a.equals(b) and len(server.requests) == len(users)


def test_rerank_orders_the_retrievers_candidates_by_text_or_by_label_logprobs(split, tmp_path):
    with FakeLLM(rerank_answer, 20) as server:
        users = list(split.test["user_id"][:8])
        hist = split.history("test")
        for logprobs in (False, True):
            rec = llm(server, tmp_path / str(logprobs), mode="rerank", candidates=15, logprobs=logprobs).fit(split)
            recs = rec.recommend(users, k=5)
            retrieved = rec.retriever_.recommend(users, k=15)
            for u, g in recs.groupby("user_id", sort=False):
                cands = list(retrieved[retrieved["user_id"] == u]["item_id"])
                assert set(g["item_id"]) <= set(cands)
                want = sorted(cands, key=lambda i: (int(i[4:]) - int(hist[u][-1][4:]) - 1) % 1000)[:5]
                assert list(g["item_id"]) == want
            assert rec.stats()["fill_rate"] == 0 and rec.stats()["invalid_answer_rate"] == 0
        assert "top_logprobs" in server.requests[-1] and "top_logprobs" not in server.requests[0]


def test_letters_on_one_line_shuffled_candidates_and_a_bounded_request(split, tmp_path):
    """The base-model format: candidates in a seeded random order, demonstrations answering with
    letters on one line, the reply bounded by max_tokens (and stop strings when asked)."""

    def answer(messages, body):
        text = messages[-1]["content"]
        last = int(TITLE.findall(text.split("Candidates:")[0])[-1])
        cands = re.findall(r"^([A-Z]{1,2})\. thing number (\d+)$", text, flags=re.MULTILINE)
        return "\n" + " ".join(lab for lab, _ in sorted(cands, key=lambda c: (int(c[1]) - last - 1) % 1000))

    with FakeLLM(answer, 20) as server:
        users = list(split.test["user_id"][:8])
        hist = split.history("test")
        common = dict(mode="rerank", candidates=15, template="chat-rerank-3", separator=" ", candidate_order="shuffled")
        rec = llm(server, tmp_path / "a", shots=1, concurrency=1, **common).fit(split)  # requests in users' order
        recs = rec.recommend(users, k=5)
        retrieved = rec.retriever_.recommend(users, k=15)
        shown_in_order = 0
        for body, u in zip(server.requests, users):
            cands = list(retrieved[retrieved["user_id"] == u]["item_id"])
            shown = [f"item{i}" for i in re.findall(r"^[A-Z]{1,2}\. thing number (\d+)$", body["messages"][-1]["content"], flags=re.MULTILINE)]
            assert sorted(shown) == sorted(cands)
            shown_in_order += shown == cands
            assert body["max_tokens"] == 2 * 5 + 2 and "stop" not in body
            assert re.fullmatch(r"[A-Z]( [A-Z])*", body["messages"][1]["content"])  # the demonstration's answer
        assert shown_in_order < len(users)  # shuffled, not the retriever's order
        for u, g in recs.groupby("user_id", sort=False):
            cands = list(retrieved[retrieved["user_id"] == u]["item_id"])
            want = sorted(cands, key=lambda i: (int(i[4:]) - int(hist[u][-1][4:]) - 1) % 1000)[:5]
            assert list(g["item_id"]) == want
        s = rec.stats()
        assert s["fill_rate"] == 0 and s["parse_failure_rate"] == 0 and s["invalid_answer_rate"] == 0
        llm(server, tmp_path / "b", max_tokens=7, stop=["\n\n", "\nUser:"], **common).fit(split).recommend(users[:1], k=5)
        assert server.requests[-1]["max_tokens"] == 7 and server.requests[-1]["stop"] == ["\n\n", "\nUser:"]
    with pytest.raises(ValueError, match="candidate_order"):
        LLMRecommender("http://x/v1", "m", candidate_order="random")


def test_samples_rank_items_by_how_many_replies_name_them(split, tmp_path):
    def answer(messages, body):
        history = messages[-1]["content"].split("oldest first:\n")[1].split("\n\n")[0]
        last = int(TITLE.findall(history)[-1])
        return f"thing number {(last + 1 + (body['seed'] >= 3)) % 20}"  # seeds 0-2: the successor

    with FakeLLM(answer, 20) as server:
        users = list(split.test["user_id"][:6])
        rec = llm(server, tmp_path, samples=5, temperature=1.0).fit(split)
        recs = rec.recommend(users, k=5)
        hist = split.history("test")
        for u, g in recs.groupby("user_id", sort=False):
            last = int(hist[u][-1][4:])
            assert list(g["item_id"][:2]) == [f"item{(last + 1) % 20}", f"item{(last + 2) % 20}"]
        assert rec.stats()["requests"] == 30 and sorted({b["seed"] for b in server.requests}) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="temperature"):
        LLMRecommender("http://x/v1", "m", samples=3)


def test_few_shot_demonstrations_come_from_other_users_training_data(split, tmp_path):
    with FakeLLM(cycle_answer(20), 20) as server:
        rec = llm(server, tmp_path, shots=2).fit(split)
        train = split.train_sequences()
        for u in split.test["user_id"][:10]:
            demos = rec._demos(u, 5)
            assert len(demos) == 4 and demos == rec._demos(u, 5)  # seeded: prompts stay cached
            pool = rec._demo_pool(u)
            assert len(pool) == 2 and u not in pool  # other users only
            for other, question, answer in zip(pool, demos[::2], demos[1::2]):
                shown = [f"item{i}" for i in TITLE.findall(question["content"])]
                nxt = [f"item{i}" for i in TITLE.findall(answer["content"])]
                assert train[other][: len(shown) + len(nxt)] == shown + nxt  # its training data


# ---------------------------------------------------------------------------------------- faults
@pytest.mark.parametrize("fault", ["429", "500", "timeout", "malformed", "empty"])
def test_a_transient_fault_is_retried(fault, split, tmp_path):
    with FakeLLM(cycle_answer(20), 20) as server:
        rec = llm(server, tmp_path).fit(split)
        server.faults = [fault, fault]
        recs = rec.recommend([split.test["user_id"][0]], k=5)
        s = rec.stats()
        assert s["retries"] == 2 and s["failed_requests"] == 0 and s["fill_rate"] == pytest.approx(2 / 5)
        assert len(recs) == 5


@pytest.mark.parametrize("fault", ["429", "500", "timeout", "malformed", "empty"])
def test_a_lasting_fault_falls_back_to_the_retriever_or_raises_clearly(fault, split, tmp_path):
    with FakeLLM(cycle_answer(20), 20) as server:
        user = split.test["user_id"][0]
        rec = llm(server, tmp_path, max_retries=2).fit(split)
        server.faults = [fault] * 3
        start = time.time()
        recs = rec.recommend([user], k=5)
        assert time.time() - start < 10  # retried, never hung
        expected = rec.retriever_.recommend([user], k=5)
        assert list(recs["item_id"]) == list(expected["item_id"])  # the documented fallback
        s = rec.stats()
        assert s["failed_requests"] == 1 and s["failed_replies"] == 1 and s["fill_rate"] == 1.0
        strict = llm(server, tmp_path / "strict", max_retries=1, on_failure="raise").fit(split)
        server.faults = [fault] * 2
        with pytest.raises(LLMError, match="failed after 2 tries"):
            strict.recommend([user], k=5)


def test_a_client_error_is_not_retried(split, tmp_path):
    with FakeLLM(cycle_answer(20), 20) as server:
        rec = llm(server, tmp_path, model="fake").fit(split)
        rec.client.base_url = server.url.replace("/v1", "/nowhere")
        with pytest.raises(LLMError, match="HTTP 404"):
            rec.recommend([split.test["user_id"][0]], k=5)
        assert rec.stats()["requests"] == 1


def test_the_budget_stops_before_the_request_and_a_rerun_continues_from_the_cache(split, tmp_path):
    with FakeLLM(cycle_answer(20), 20) as server:
        users = list(split.test["user_id"][:6])
        rec = llm(server, tmp_path, max_requests=3, concurrency=1).fit(split)
        with pytest.raises(BudgetExceeded, match="max_requests=3"):
            rec.recommend(users, k=5)
        assert len(server.requests) == 3
        more = llm(server, tmp_path, max_requests=3, concurrency=1).fit(split)
        more.recommend(users, k=5)
        assert more.stats()["cache_hits"] == 3 and more.stats()["requests"] == 3
        few = llm(server, tmp_path, max_users=8).fit(split)
        few.recommend(users, k=5)
        with pytest.raises(BudgetExceeded, match="max_users=8"):
            few.recommend(users, k=5)


def test_the_api_key_appears_in_no_log_line(split, tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setenv("PROMPTREC_TEST_KEY", KEY)
    monkeypatch.setenv("OPENAI_LOG", "debug")
    caplog.set_level(logging.DEBUG)
    with FakeLLM(cycle_answer(20), 20) as server:
        rec = llm(server, tmp_path, max_retries=1).fit(split)
        server.faults = ["500", "500", "429"]
        rec.recommend(list(split.test["user_id"][:3]), k=5)
        assert server.auth and all(KEY in a for a in server.auth)
    assert caplog.records and not any(KEY in r.getMessage() for r in caplog.records)
    out, err = capfd.readouterr()
    assert KEY not in out and KEY not in err
    assert KEY not in json.dumps(rec.get_params())


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="mode"):
        LLMRecommender("http://x/v1", "m", mode="chat")
    with pytest.raises(ValueError, match="codes_from"):
        LLMRecommender("http://x/v1", "m", item_format="code")
    with pytest.raises(ValueError, match="rerank"):
        LLMRecommender("http://x/v1", "m", logprobs=True)


# ------------------------------------------------------------- an independent server: transformers
@pytest.fixture(scope="module")
def transformers_server(tmp_path_factory):
    """``transformers serve`` on loopback, serving a tiny promptrec decoder that learned the cycle,
    exported as a plain transformers chat model."""
    import subprocess
    import sys

    from conftest import cyclic_data

    from promptrec.models.p5.config import RunConfig
    from promptrec.models.p5.export import export_chat_model, serve_chat_model
    from promptrec.models.p5.model import P5Recommender

    if subprocess.run([sys.executable, "-c", "from transformers.utils.import_utils import is_serve_available as a; assert a()"]).returncode:
        pytest.skip("transformers serve needs its serving extra (fastapi, uvicorn, openai)")
    split = leave_one_out(cyclic_data(n_users=80, n_items=20))
    cfg = RunConfig().update({
        "model.preset": "tiny", "model.backbone": "gpt2", "index.method": "random", "index.params": {"levels": 1},
        "train.epochs": 20, "train.patience": 20, "train.lr": 0.005, "train.schedule": "constant",
        "train.batch_size": 16, "train.val_users": 10,
    })
    root = tmp_path_factory.mktemp("decoder")
    P5Recommender(cfg).fit(split, progress=False).save_pretrained(root / "p5")
    chat = export_chat_model(root / "p5", root / "chat")
    proc, url = serve_chat_model(chat, free_port(), root / "serve.log", timeout=120)
    try:
        yield url, str(chat), root / "p5", split
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_promptrec_decoder_behind_transformers_serve_recommends(transformers_server, tmp_path):
    url, served, p5_dir, split = transformers_server
    users = list(split.test["user_id"][:30])
    params = dict(base_url=url, model=served, item_format="code", codes_from=str(p5_dir), template="seq-1",
                  cache_dir=str(tmp_path / "cache"), timeout=30)
    rec = LLMRecommender(**params).fit(split)
    summary, _ = evaluate_rankings(rec, split, k=5, users=users, metrics=["HR@1", "HR@5"])
    s = rec.stats()
    # Every reply is a code of the catalogue; greedy decoding without the trie often names an item
    # the user already has (the decoder copies), which is dropped and filled from the retriever.
    assert s["requests"] == 30 and s["parse_failure_rate"] == 0 and s["invalid_answer_rate"] == 0
    assert s["named_per_reply"] >= 1 and s["history_dropped"] + 30 * 5 * (1 - s["fill_rate"]) == pytest.approx(s["named_per_reply"] * 30)
    again = LLMRecommender(**params).fit(split)
    assert evaluate_rankings(again, split, k=5, users=users, metrics=["HR@1", "HR@5"])[0]["HR@1"] == summary["HR@1"]
    assert again.stats()["requests"] == 0 and again.stats()["cache_hits"] == 30


def test_the_command_line_evaluates_an_endpoint(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from conftest import cyclic_data
    from promptrec.cli import app

    data = cyclic_data(n_users=30, n_items=20)
    data.interactions.to_csv(tmp_path / "events.csv", index=False)
    data.items.rename_axis("item_id").reset_index().to_csv(tmp_path / "items.csv", index=False)
    monkeypatch.setenv("PROMPTREC_TEST_KEY", KEY)
    with FakeLLM(cycle_answer(20), 20) as server:
        args = ["llm", "--base-url", server.url, "--model", "fake", "--loader", "tabular", "--data", str(tmp_path / "events.csv"),
                "--option", f"items={tmp_path / 'items.csv'}", "--users", "12", "-k", "5", "--api-key-env", "PROMPTREC_TEST_KEY",
                "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "out.json")]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        out = json.loads((tmp_path / "out.json").read_text())
        assert out["eval_users"] == 12 and out["HR@1"] == 1.0 and out["requests"] == 12
        assert CliRunner().invoke(app, args).exit_code == 0
        assert json.loads((tmp_path / "out.json").read_text())["requests"] == 0  # all from the cache
        assert KEY not in result.output
