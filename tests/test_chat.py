"""Recommendations through the OpenAI chat protocol and in conversation.

The bar: the ``openai`` package pointed at a real ``promptrec serve`` gets, for a user, the item
ids that ``promptrec recommend`` gives. Then a scripted three-turn conversation (a liked item, a
disliked one, a genre) whose grounded mentions and recommendations change accordingly, grounding
on its own, the terminal ``promptrec chat``, streaming and OpenAI-style errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pandas as pd
import pytest
from conftest import cyclic_data
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from test_serve import KEY, TINY, Served
from typer.testing import CliRunner

from promptrec.cli import app
from promptrec.data import InteractionData, leave_one_out
from promptrec.models.p5.config import RunConfig
from promptrec.models.p5.model import P5Recommender
from promptrec.serving.conversation import Catalogue, Conversation, Plan, engine_backend, item_attributes

runner = CliRunner()
ADJECTIVES = ["Silent", "Golden", "Crimson", "Hidden", "Frozen", "Wild"]
NOUNS = ["Harbor", "Meadow", "Engine", "Lantern", "Orchard"]
GENRES = ["Comedy", "Drama", "Horror"]
N_ITEMS = 30


def genre_data() -> InteractionData:
    """The cyclic walks of conftest, over items with distinct titles and one genre each."""
    data = cyclic_data(n_items=N_ITEMS)
    items = pd.DataFrame({
        "item_id": [f"item{i}" for i in range(N_ITEMS)],
        "title": [f"The {a} {n}" for a in ADJECTIVES for n in NOUNS],
        "categories": [[GENRES[i % 3]] for i in range(N_ITEMS)],
    })
    return InteractionData(data.interactions, items)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("chat") / "model"
    P5Recommender(RunConfig().update(TINY)).fit(leave_one_out(genre_data()), progress=False).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory) -> Iterator[Served]:
    served = Served(model_dir, tmp_path_factory.mktemp("db") / "feedback.db")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    # Any key: the chat endpoints only read, like /recommend.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    items = genre_data().items
    attributes = {**item_attributes(items), "brand": {f"item{i}": ["Acme"] for i in range(3)}}
    return Catalogue(list(items.index), items["title"].to_dict(), attributes, ["user0", "user1"])


def ids(completion: ChatCompletion) -> list[str]:
    return [r["item_id"] for r in completion.model_extra["recommendations"]]


def cli_recommend(model_dir: Path, user: str, k: int = 10) -> list[str]:
    result = runner.invoke(app, ["recommend", "--model", str(model_dir), "--user", user, "-k", str(k), "--json"])
    assert result.exit_code == 0, result.output
    return [r["item_id"] for r in json.loads(result.output)]


# -- the OpenAI protocol ------------------------------------------------------------------------
def test_openai_client_gets_the_items_of_promptrec_recommend(client, server, model_dir) -> None:
    assert [m.id for m in client.models.list().data] == ["promptrec"]
    for user in ["user0", "user7", "user13", "user22", "user39"]:
        expected = cli_recommend(model_dir, user)
        assert len(expected) == 10
        said = client.chat.completions.create(
            model="promptrec", messages=[{"role": "user", "content": f"What should I watch next? I am {user}."}]
        )
        assert isinstance(said, ChatCompletion) and said.choices[0].finish_reason == "stop"
        assert ids(said) == expected
        assert said.model_extra["conversation"]["user_id"] == user
        # The reply names the items by title, in order.
        text = said.choices[0].message.content
        titles = [r["title"] for r in said.model_extra["recommendations"]]
        assert all(t in text for t in titles) and [text.index(t) for t in titles] == sorted(text.index(t) for t in titles)
        # The request's user field and an explicit k say the same.
        by_field = client.chat.completions.create(
            model="promptrec", messages=[{"role": "user", "content": "recommend something"}], user=user,
            extra_body={"k": 4},
        )
        assert ids(by_field) == expected[:4]
        plain = httpx.post(f"{server.url}/recommend", json={"user_id": user, "k": 10}, headers={"X-API-Key": KEY}).json()
        assert [i["item_id"] for i in plain["items"]] == expected


def test_conversation_over_the_endpoint(client) -> None:
    messages = [
        {"role": "user", "content": "I liked The Silent Harbour"},
        {"role": "assistant", "content": "(an earlier answer)"},
        {"role": "user", "content": [{"type": "text", "text": "but not The Golden Meadow, and no horror"}]},
    ]
    said = client.chat.completions.create(model="promptrec", messages=messages, extra_body={"k": 5})
    extra = said.model_extra
    assert extra["conversation"]["liked"] == ["item0"] and extra["conversation"]["disliked"] == ["item6"]
    assert extra["conversation"]["banned"] == {"categories": ["Horror"]}
    got = ids(said)
    assert len(got) == 5 and not {"item0", "item6"} & set(got)
    assert all(int(i.removeprefix("item")) % 3 != 2 for i in got)  # no Horror item
    assert [m["turn"] for m in extra["conversation"]["mentions"]] == [0, 1, 1]


def test_streaming_matches_the_plain_answer(client, server) -> None:
    messages = [{"role": "user", "content": "I am user5 and I would like something in genre drama"}]
    plain = client.chat.completions.create(model="promptrec", messages=messages)
    chunks = list(client.chat.completions.create(model="promptrec", messages=messages, stream=True))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop" and all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert [r["item_id"] for r in last.model_extra["recommendations"]] == ids(plain)
    assert all(int(i.removeprefix("item")) % 3 == 1 for i in ids(plain))  # Drama only
    raw = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "promptrec", "messages": messages, "stream": True},
                     headers={"Authorization": f"Bearer {KEY}"})
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        ChatCompletionChunk.model_validate(json.loads(event.removeprefix("data: ")))


def test_openai_style_errors(client, server) -> None:
    hello = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=hello)
    assert err.value.status_code == 404 and err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="promptrec", messages=[{"role": "system", "content": "be brief"}])
    assert err.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="promptrec", messages=hello, extra_body={"k": 21})  # the server's max_k: 20
    assert err.value.param == "k"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="promptrec", messages=hello, extra_body={"top_k": 3})
    assert "unsupported parameter: top_k" in err.value.message
    url = f"{server.url}/v1/chat/completions"
    bad = httpx.post(url, content=b"{not json", headers={"content-type": "application/json", "Authorization": f"Bearer {KEY}"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    bad = httpx.post(url, json={"model": "promptrec", "messages": [{"role": "wizard", "content": "hi"}]},
                     headers={"Authorization": f"Bearer {KEY}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages.0.role"
    # Other routes keep FastAPI's own validation answers.
    assert httpx.post(f"{server.url}/recommend", content=b"{not json",
                      headers={"content-type": "application/json", "X-API-Key": KEY}).status_code == 422


# -- conversation -------------------------------------------------------------------------------
def test_scripted_three_turn_conversation(model_dir) -> None:
    from promptrec.serving.engine import Engine

    engine = Engine(model_dir)
    chat = Conversation(Catalogue.from_recommender(engine.rec), engine_backend(engine), k=5)
    genre = {i: engine.rec.items.loc[i, "categories"][0] for i in engine.rec.catalogue()}

    first = chat.turn("I liked the silent harbour")  # a typo and lower case: grounded by fuzzy match
    liked = [(m.kind, m.value, m.polarity) for m in first.mentions]
    assert liked == [("item", "item0", "like")] and first.state["liked"] == ["item0"]
    assert first.strategy == "model" and len(first.items) == 5
    assert "item0" not in [r.item_id for r in first.items]

    top = first.items[0]
    second = chat.turn(f"not {top.title}")
    assert [(m.kind, m.value, m.polarity) for m in second.mentions] == [("item", top.item_id, "dislike")]
    got = [r.item_id for r in second.items]
    assert len(got) == 5 and top.item_id not in got and "item0" not in got

    # A genre that not every current recommendation has, so the filter has something to do.
    wanted = next(g for g in GENRES if any(genre[i] != g for i in got))
    third = chat.turn(f"something in genre {wanted.lower()}")
    assert [(m.kind, m.value, m.column) for m in third.mentions] == [("attribute", wanted, "categories")]
    final = [r.item_id for r in third.items]
    assert len(final) == 5 and all(genre[i] == wanted for i in final)
    assert not {"item0", top.item_id} & set(final)
    assert third.state["required"] == {"categories": [wanted]} and wanted in third.text


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("I liked The Crimson Engine and the wild orchard", [("item12", "like"), ("item29", "like")]),
        ("I didn't like The Hidden Lantern", [("item18", "dislike")]),
        ("no more Frozen Meadow please", [("item21", "dislike")]),
        ("I loved item3 but not #4", [("item3", "like")]),  # "#4" is no id here: ids are item0..item29
        ("The Golden Harbor, not The Golden Meadow", [("item5", "like"), ("item6", "dislike")]),
        ("anything but horror", [("Horror", "dislike")]),
        ("more comedies, no dramas", [("Comedy", "like"), ("Drama", "dislike")]),
        ("I am user1 and I like the silent engin", [("user1", "like"), ("item2", "like")]),
        ("Something for user0.", [("user0", "like")]),  # the full stop is not part of the id
        ("I had a wild time at the harbor", []),  # words of titles, not a title
    ],
)
def test_grounding(catalogue, message, expected) -> None:
    assert [(m.value, m.polarity) for m in catalogue.ground(message)] == expected


def test_grounding_titles_with_commas_colons_and_cue_words() -> None:
    titles = ["Like Water For Chocolate (Como agua para chocolate) (1992)", "Net, The (1995)",
              "Mission: Impossible (1996)", "Ace Ventura: Pet Detective (1994)", "Ace Ventura: When Nature Calls (1995)"]
    catalogue = Catalogue([str(i) for i in range(5)], {str(i): t for i, t in enumerate(titles)})
    said = "I liked Ace Ventura: Pet Detective and Mission: Impossible, not Net, The, or Like Water for Chocolate"
    assert [(m.value, m.polarity) for m in catalogue.ground(said)] == [
        ("3", "like"), ("2", "like"), ("1", "dislike"), ("0", "dislike")
    ]
    assert [(m.value, m.polarity) for m in catalogue.ground("I did not like the net")] == [("1", "dislike")]


def test_filters_that_leave_fewer_than_k_say_so(catalogue) -> None:
    asked: list[Plan] = []

    def backend(plan: Plan) -> tuple[list[tuple[str, float]], str]:
        asked.append(plan)
        pool = plan.candidates if plan.candidates is not None else catalogue.items
        return [(i, -n) for n, i in enumerate(pool) if i not in plan.liked][: plan.fetch], "model"

    chat = Conversation(catalogue, backend, k=12)
    reply = chat.turn("The Silent Harbor, not The Silent Engine")
    assert asked[-1].fetch == 13 and asked[-1].candidates is None  # one more for the one dislike
    assert len(reply.items) == 12 and "item2" not in [r.item_id for r in reply.items]
    reply = chat.turn("only comedy")
    comedies = [f"item{i}" for i in range(0, N_ITEMS, 3)]
    assert set(asked[-1].candidates) == set(comedies) - {"item0"}
    assert [r.item_id for r in reply.items] == comedies[1:]
    assert reply.note is not None and reply.note.startswith("Only 9 items") and reply.note in reply.text
    # The only Acme comedy is the liked one: nothing is left to recommend.
    reply = chat.turn("start over. I am user0; I liked The Silent Harbor; only Acme comedies")
    assert reply.state == {"user_id": "user0", "liked": ["item0"], "disliked": [], "banned": {},
                           "required": {"brand": ["Acme"], "categories": ["Comedy"]}}
    assert reply.items == [] and reply.strategy == "none" and reply.note.startswith("Only 0 items")


def test_promptrec_chat_reads_lines_until_quit(model_dir) -> None:
    lines = "I liked The Wild Harbor\n\nnot The Golden Engine\nquit\nI liked The Frozen Lantern\n"
    result = runner.invoke(app, ["chat", "--model", str(model_dir), "-k", "3", "--json"], input=lines)
    assert result.exit_code == 0, result.output
    replies = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    assert [r["state"]["liked"] for r in replies] == [["item25"], ["item25"]]  # nothing after "quit"
    assert replies[1]["state"]["disliked"] == ["item7"]
    assert all(len(r["items"]) == 3 and "item7" not in [i["item_id"] for i in r["items"]] for r in replies[1:])
    text = runner.invoke(app, ["chat", "--model", str(model_dir), "-k", "2"], input="I liked The Wild Harbor")
    assert text.exit_code == 0 and "Noted: The Wild Harbor (item item25)" in text.output
    assert "quit" in runner.invoke(app, ["chat", "--help"]).output
