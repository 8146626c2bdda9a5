"""Serving replicas: several ``promptrec serve`` processes on one PostgreSQL store.

What a replica may not keep to itself: feedback posted to one replica changes the next answer of
every other (their answer caches are keyed on what the store holds, read per request), the same
event ids written through several replicas at once are stored once and never fail a request,
and replicas that start together on an empty database do not race to create its tables.

The PostgreSQL server is the ``postgres_url`` fixture (tests/conftest.py): a throwaway one on
loopback, or ``PROMPTREC_TEST_POSTGRES_URL``; each test works in an empty schema of its own.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import ServedModel

from promptrec.core.recommender import build_recommender
from promptrec.data import InteractionData, leave_one_out
from promptrec.serving.store import FeedbackEvent, FeedbackStore, events_fingerprint, feedback_events

AUTH = {"X-API-Key": ServedModel.key}
# Popularity order a b c ... j (counts 10 down to 1); user "u1" has seen j, i and h.
COUNTS = dict(zip("abcdefghij", range(10, 0, -1)))


def event(user: str, item: str, event_id: str, type: str = "click", timestamp: float = 1e9) -> FeedbackEvent:
    return FeedbackEvent(event_id=event_id, user_id=user, item_id=item, type=type, timestamp=timestamp)


# -- the store under several writers -----------------------------------------------------------
def test_replicas_starting_together_on_an_empty_database_migrate_once(postgres_schema_url) -> None:
    """Every replica runs the migrations when it opens the store; started together on an empty
    database they take turns (an advisory lock) instead of failing on each other's CREATE TABLE."""
    barrier = threading.Barrier(6)

    def open_store(_: int) -> int:
        barrier.wait()
        with FeedbackStore(postgres_schema_url) as store:
            return store.count()

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(open_store, range(6))) == [0] * 6
    with FeedbackStore(postgres_schema_url) as store, store._engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == ["0001"]


def test_the_same_ids_in_any_order_from_many_writers_are_stored_once(postgres_schema_url) -> None:
    """Writers (replicas) inserting overlapping batches in different orders: every call succeeds
    (no deadlock between them), each id is stored once, and the stored counts add up."""
    ids = [f"e{n:03d}" for n in range(120)]
    barrier = threading.Barrier(8)

    def write(seed: int) -> int:
        order = ids[:]
        random.Random(seed).shuffle(order)
        with FeedbackStore(postgres_schema_url) as store:
            barrier.wait()
            stored = 0
            for start in range(0, len(order), 40):
                stored += store.add([event("u", "i", e) for e in order[start:start + 40]]).stored
            return stored

    with ThreadPoolExecutor(8) as pool:
        stored = list(pool.map(write, range(8)))
    assert sum(stored) == len(ids)
    with FeedbackStore(postgres_schema_url) as store:
        assert store.count() == len(ids) and store.has(ids) == set(ids)


def test_the_fingerprint_changes_when_an_older_insert_commits_late(postgres_schema_url) -> None:
    """PostgreSQL hands out ``seq`` at insert time, not at commit: a transaction that took a lower
    seq can commit after one with a higher seq (two replicas writing for one user). The highest
    seq then stays the same while the user's events change; the fingerprint must not."""
    with FeedbackStore(postgres_schema_url) as store:
        store.add([event("u", "a", "first", timestamp=1.0)])
        slow = store._engine.connect()
        transaction = slow.begin()
        slow.execute(sa.insert(feedback_events).values(event_id="slow", user_id="u", item_id="b", type="click",
                                                       timestamp=2.0, received_at=2.0))  # takes its seq now
        store.add([event("u", "c", "fast", timestamp=3.0)])  # a higher seq, committed first
        seen = store.user_events("u")
        assert [e.item_id for e in seen] == ["a", "c"]
        transaction.commit()
        slow.close()
        now = store.user_events("u")
        assert [e.item_id for e in now] == ["a", "b", "c"]
        assert max(e.seq for e in now) == max(e.seq for e in seen)  # why the highest seq is not a key
        assert events_fingerprint(now) != events_fingerprint(seen)
        assert events_fingerprint(store.user_events("u")) == events_fingerprint(now)


# -- two replicas over HTTP --------------------------------------------------------------------
@pytest.fixture(scope="module")
def popularity_model(tmp_path_factory) -> Path:
    rows = [(f"p-{item}-{n}", item, 0) for item, count in COUNTS.items() for n in range(count)]
    rows += [("u1", "j", 0), ("u1", "i", 1), ("u1", "h", 2)]  # a known user: train, valid, test
    items = pd.DataFrame({"item_id": list(COUNTS), "title": [f"item {i}" for i in COUNTS]})
    data = InteractionData(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]), items)
    directory = tmp_path_factory.mktemp("replicas") / "model"
    build_recommender("popularity", seed=0).fit(leave_one_out(data)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def replica_store(postgres_url) -> Iterator[str]:
    """The schema both replicas share (the tests below use users and ids of their own in it)."""
    from postgres_server import drop_schema, fresh_schema

    url = fresh_schema(postgres_url)
    yield url
    drop_schema(url)


@pytest.fixture(scope="module")
def replicas(popularity_model, replica_store, tmp_path_factory) -> Iterator[tuple[ServedModel, ServedModel]]:
    """Two ``promptrec serve`` processes on one PostgreSQL schema, answer caches on (the default),
    started together, as a deployment would."""
    logs = tmp_path_factory.mktemp("replica-logs")

    def start(name: str) -> ServedModel:
        return ServedModel(popularity_model, replica_store, "--no-spare-process", log=logs / f"{name}.log")

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(start, name) for name in "ab"]
    try:
        a, b = (f.result() for f in futures)
    except Exception:
        for f in futures:
            if f.exception() is None:
                f.result().stop()
        raise
    yield a, b
    a.stop()
    b.stop()


def recommend(client: httpx.Client, user: str) -> dict:
    response = client.post("/recommend", json={"user_id": user, "k": 3})
    assert response.status_code == 200, response.text
    return response.json()


def ranked(answer: dict) -> list[str]:
    return [i["item_id"] for i in answer["items"]]


def test_feedback_to_one_replica_changes_the_next_answer_of_the_other(replicas, replica_store) -> None:
    a, b = replicas
    with httpx.Client(base_url=a.url, headers=AUTH, timeout=30) as ca, \
            httpx.Client(base_url=b.url, headers=AUTH, timeout=30) as cb:
        before = recommend(cb, "u1")
        assert ranked(before) == ["a", "b", "c"] and recommend(cb, "u1")["cached"]  # B's cache holds it
        assert ranked(recommend(ca, "u1")) == ["a", "b", "c"]  # A has it cached too

        # A click on "a" through A: B's next answer excludes it (seen), and is not its cached one.
        ack = ca.post("/feedback", json={"events": [{"event_id": "click-a", "user_id": "u1", "item_id": "a",
                                                     "type": "click", "timestamp": 1e9}]})
        assert ack.status_code == 200 and ack.json()["stored"] == 1
        after = recommend(cb, "u1")
        assert not after["cached"] and ranked(after) == ["b", "c", "d"]
        # And back the other way: a skip of "b" through B demotes it on A.
        ack = cb.post("/feedback", json={"events": [{"event_id": "skip-b", "user_id": "u1", "item_id": "b",
                                                     "type": "skip", "timestamp": 1e9 + 1}]})
        assert ack.status_code == 200 and ack.json()["stored"] == 1
        on_a = recommend(ca, "u1")
        assert not on_a["cached"] and ranked(on_a) == ["c", "d", "e"]
        assert ranked(recommend(cb, "u1")) == ["c", "d", "e"]

        # A writer whose insert commits after a later one (another replica mid-transaction): the
        # highest seq of u1 does not change when it commits, the answers must all the same.
        engine = sa.create_engine(replica_store)
        with engine.connect() as slow:
            transaction = slow.begin()
            slow.execute(sa.insert(feedback_events).values(event_id="slow-c", user_id="u1", item_id="c",
                                                           type="purchase", timestamp=1e9 + 2, received_at=1e9))
            ack = ca.post("/feedback", json={"events": [{"event_id": "click-g", "user_id": "u1", "item_id": "g",
                                                         "type": "click", "timestamp": 1e9 + 3}]})
            assert ack.status_code == 200
            cached_now = recommend(cb, "u1")
            assert ranked(cached_now) == ["c", "d", "e"] and recommend(cb, "u1")["cached"]
            transaction.commit()
        engine.dispose()
        late = recommend(cb, "u1")
        assert not late["cached"] and ranked(late) == ["d", "e", "f"]
        assert ranked(recommend(ca, "u1")) == ["d", "e", "f"]


def test_the_same_events_posted_to_both_replicas_at_once_are_stored_once(replicas, replica_store) -> None:
    """Clients retrying through whichever replica answers: the same ids, in different orders, to
    both replicas at once. Every request succeeds, each id is stored once, and across all the
    answers each id is reported stored exactly once (the others: duplicates)."""
    a, b = replicas
    token = uuid.uuid4().hex[:8]
    ids = [f"{token}-{n}" for n in range(60)]
    barrier = threading.Barrier(8)
    with FeedbackStore(replica_store) as store:
        count_before = store.count()

    def post(worker: int) -> list[dict]:
        rng = random.Random(worker)
        url = (a, b)[worker % 2].url
        answers = []
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
            barrier.wait()
            for _ in range(3):
                batch = rng.sample(ids, 20)
                events = [{"event_id": e, "user_id": f"user-{e}", "item_id": "a", "type": "click", "timestamp": 5.0}
                          for e in batch]
                response = client.post("/feedback", json={"events": events})
                assert response.status_code == 200, response.text
                answers.append(response.json())
            # and finally every id, so that each is acknowledged by this worker
            events = [{"event_id": e, "user_id": f"user-{e}", "item_id": "a", "type": "click", "timestamp": 5.0}
                      for e in rng.sample(ids, len(ids))]
            response = client.post("/feedback", json={"events": events})
            assert response.status_code == 200, response.text
            answers.append(response.json())
        return answers

    with ThreadPoolExecutor(8) as pool:
        answers = [x for worker in pool.map(post, range(8)) for x in worker]
    assert sum(x["stored"] for x in answers) == len(ids)
    assert sum(x["stored"] + x["duplicates"] for x in answers) == sum(len(x["event_ids"]) for x in answers)
    with FeedbackStore(replica_store) as store:
        assert store.count() == count_before + len(ids) and store.has(ids) == set(ids)
