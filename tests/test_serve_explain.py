"""Explanations over HTTP: ``promptrec serve --explain LLM`` (a tiny random-init Gemma 3) on
loopback. Checked: only the first ``--explain-top`` items carry one, the sentences are the ones
``promptrec recommend --explain`` writes for the same user and model, and explained and plain
answers are cached apart."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import ServedModel, cyclic_data
from test_explain import save_tiny_gemma
from typer.testing import CliRunner

from promptrec.cli import app
from promptrec.core.recommender import build_recommender
from promptrec.data import leave_one_out

AUTH = {"X-API-Key": ServedModel.key}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    llm = save_tiny_gemma(root / "llm")
    build_recommender("popularity").fit(leave_one_out(cyclic_data(n_users=10, n_items=20))).save_pretrained(root / "pop")
    server = ServedModel(root / "pop", root / "feedback.db", "--explain", str(llm), "--explain-top", "2")
    yield server, root
    server.stop()


def test_explanations_on_the_top_items_as_the_cli_writes_them(served) -> None:
    server, root = served
    with httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as client:
        r = client.post("/recommend", json={"user_id": "user1", "k": 3, "explain": True})
        assert r.status_code == 200, r.text
        body = r.json()
        first, second, third = body["items"]
        assert third["explanation"] is None  # past --explain-top
        for item in (first, second):
            why = item["explanation"]
            assert isinstance(why["text"], str) and isinstance(why["grounded"], bool)
            assert why["grounded"] == (not why["ungrounded_items"] and not why["ungrounded_attributes"])
        # The same user, model and LLM through the CLI: the same items and sentences.
        res = CliRunner().invoke(app, ["recommend", "-m", str(root / "pop"), "-u", "user1", "-k", "2", "--json",
                                       "--explain", str(root / "llm")])
        assert res.exit_code == 0, res.output
        rows = json.loads(res.stdout.strip().splitlines()[-1])
        assert [r["item_id"] for r in rows] == [first["item_id"], second["item_id"]]
        assert [r["explanation"] for r in rows] == [first["explanation"]["text"], second["explanation"]["text"]]
        assert [r["grounded"] for r in rows] == [first["explanation"]["grounded"], second["explanation"]["grounded"]]

        # The plain answer is not the cached explained one, and the explained one stays cached.
        plain = client.post("/recommend", json={"user_id": "user1", "k": 3}).json()
        assert not plain["cached"] and all(i["explanation"] is None for i in plain["items"])
        assert [i["item_id"] for i in plain["items"]] == [i["item_id"] for i in body["items"]]
        again = client.post("/recommend", json={"user_id": "user1", "k": 3, "explain": True}).json()
        assert again["cached"] and again["items"] == body["items"]
        # k below the cap explains the whole list; the server says what it explains with.
        one = client.post("/recommend", json={"user_id": "user2", "k": 1, "explain": True}).json()
        assert one["items"][0]["explanation"] is not None
        info = client.get("/info").json()
        assert info["explain"] == str(root / "llm") and info["explain_top"] == 2 and "explain" in info["capabilities"]


def test_a_bad_explainer_name_is_one_line(served) -> None:
    res = CliRunner().invoke(app, ["serve", str(served[1] / "pop"), "--explain", "no-such-llm", "--public-read"])
    text = " ".join(res.output.replace("│", " ").split())  # as one line, whatever the terminal's width
    assert res.exit_code == 2 and "--explain: 'no-such-llm' is neither a local model directory" in text, text
