import os
import subprocess
import sys
import textwrap
import uuid

import pydantic
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from promptrec.serving.store import (
    EVENT_TYPES,
    AddResult,
    FeedbackEvent,
    FeedbackStore,
    FeedbackStoreError,
    StoredEvent,
    metadata,
)


def event(user: str = "u1", item: str = "i1", type: str = "click", **kw) -> FeedbackEvent:
    return FeedbackEvent(user_id=user, item_id=item, type=type, **kw)


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "feedback.db") as s:
        yield s


def check_add_idempotency_and_order(store: FeedbackStore) -> None:
    """The contract both backends keep; ids are unique per call so a shared PostgreSQL database works."""
    run = uuid.uuid4().hex[:8]
    user, other = f"user-{run}", f"other-{run}"
    before = store.count()

    first = store.add(
        [
            event(user, "a", event_id=f"{run}-1", timestamp=30.0),
            event(user, "b", "rating", value=4.5, event_id=f"{run}-2", timestamp=10.0),
            event(user, "c", event_id=f"{run}-1", timestamp=99.0),  # repeat inside the batch: first wins
            event(other, "a", "purchase", timestamp=20.0),
        ],
        received_at=1000.0,
    )
    assert first.stored == 3 and first.duplicates == 1
    assert first.event_ids[:3] == [f"{run}-1", f"{run}-2", f"{run}-1"]
    assert first.event_ids[3].startswith("h:") and len(first.event_ids[3]) == 66

    # A retry of the whole request, and the id-less event re-posted with its timestamp.
    again = store.add(
        [event(user, "a", event_id=f"{run}-1", timestamp=30.0), event(other, "a", "purchase", timestamp=20.0)]
    )
    assert again == AddResult(stored=0, duplicates=2, event_ids=[f"{run}-1", first.event_ids[3]])

    # Equal timestamps fall back to insertion order.
    store.add([event(user, "d", "skip", timestamp=30.0, event_id=f"{run}-3")], received_at=2000.0)
    events = store.user_events(user)
    assert [e.item_id for e in events] == ["b", "a", "d"]
    assert events[0] == StoredEvent(f"{run}-2", user, "b", "rating", 4.5, 10.0, 1000.0, events[0].seq)
    assert events[1].value is None and events[1].seq < events[2].seq
    assert [e.item_id for e in store.user_events(user, limit=2)] == ["a", "d"]
    assert store.user_events(user, limit=0) == [] and store.user_events(f"nobody-{run}") == []
    assert store.count() == before + 4
    assert store.has([f"{run}-1", f"{run}-3", f"{run}-missing", first.event_ids[3]]) == {
        f"{run}-1",
        f"{run}-3",
        first.event_ids[3],
    }
    assert store.ping()


def test_add_idempotency_and_order_sqlite(store):
    check_add_idempotency_and_order(store)


def test_add_idempotency_and_order_postgres(postgres_schema_url):
    with FeedbackStore(postgres_schema_url) as store:
        assert store.url.startswith("postgresql+psycopg://")
        check_add_idempotency_and_order(store)
    with FeedbackStore(postgres_schema_url) as store, store._engine.connect() as conn:  # reopening is a no-op
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == ["0001"]
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_migrations_create_schema_and_reopen_is_noop(tmp_path):
    path = tmp_path / "nested" / "dir" / "feedback.db"
    with FeedbackStore(path) as s:
        s.add([event(timestamp=1.0)])
    for _ in range(2):
        with FeedbackStore(str(path)) as s, s._engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == ["0001"]
            # The table the queries are written against is exactly the one the migrations made.
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
            assert s.count() == 1


def test_default_location_and_sqlite_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with FeedbackStore() as s:
        assert s.url.endswith(f"{tmp_path}/feedback.db")
    with FeedbackStore(f"sqlite:///{tmp_path}/sub/other.db") as s:
        s.add([event(timestamp=1.0)])
    assert (tmp_path / "feedback.db").is_file() and (tmp_path / "sub" / "other.db").is_file()


def test_sqlite_pragmas_are_set_on_every_connection(store):
    with store._engine.connect() as a, store._engine.connect() as b:
        for conn in (a, b):
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000


def test_ids_without_event_id():
    a = event(timestamp=5.0, value=1)
    assert a.resolved_id() == event(timestamp=5.0, value=1.0).resolved_id()  # canonical: 1 == 1.0
    assert a.resolved_id() != event(timestamp=5.5, value=1).resolved_id()
    assert event(event_id="mine", timestamp=5.0).resolved_id() == "mine"
    with pytest.raises(ValueError, match="timestamp"):
        event().resolved_id()


def test_missing_timestamp_uses_received_at(store):
    first = store.add([event(), event()], received_at=100.0)
    assert first.stored == 1 and first.duplicates == 1  # same content, same receive time: one event
    assert store.add([event()], received_at=100.0).stored == 0  # a retry that lands at the same time
    assert store.add([event()], received_at=101.0).stored == 1  # a later, separate click
    stored = store.user_events("u1")
    assert [(e.timestamp, e.received_at) for e in stored] == [(100.0, 100.0), (101.0, 101.0)]
    # An explicit timestamp is kept; received_at still records arrival.
    store.add([event(timestamp=50.0)], received_at=102.0)
    assert (store.user_events("u1")[0].timestamp, store.user_events("u1")[0].received_at) == (50.0, 102.0)
    assert store.add([]) == AddResult(0, 0, [])
    with pytest.raises(ValueError):
        store.add([event()], received_at=float("nan"))


def test_events_since_window(store):
    store.add([event(f"u{t % 3}", f"i{t}", timestamp=float(t)) for t in range(10)])
    store.add([event("u9", "late", "rating", value=2.0, timestamp=3.0)])  # same timestamp, inserted later
    frame = store.events_since(3.0, 6.0)
    assert list(frame.columns) == ["event_id", "user_id", "item_id", "type", "value", "timestamp", "received_at", "seq"]
    assert list(frame["item_id"]) == ["i3", "late", "i4", "i5"]
    assert frame["value"].isna().tolist() == [True, False, True, True]
    assert len(store.events_since()) == 11 and len(store.events_since(since=8.0)) == 2
    assert len(store.events_since(until=1.0)) == 1
    empty = store.events_since(100.0)
    assert empty.empty and list(empty.columns) == list(frame.columns) and empty["seq"].dtype == "int64"


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "rating"},  # a rating needs a value
        {"type": "rating", "value": float("nan")},
        {"type": "click", "value": float("inf")},
        {"type": "click", "timestamp": float("-inf")},
        {"type": "like"},
        {"type": "click", "user_id": ""},
        {"type": "click", "item_id": ""},
        {"type": "click", "user_id": "x" * 257},
        {"type": "click", "event_id": ""},
        {"type": "click", "event_id": "e" * 129},
        {"type": "click", "user_id": 7},  # ids are strings, not coerced numbers
        {"type": "click", "colour": "red"},
    ],
)
def test_validation_errors(fields):
    with pytest.raises(pydantic.ValidationError):
        FeedbackEvent(**({"user_id": "u", "item_id": "i"} | fields))


def test_valid_events():
    assert {t: FeedbackEvent(user_id="u", item_id="i", type=t, value=1.0).type for t in EVENT_TYPES} == {
        t: t for t in EVENT_TYPES
    }
    # The documented ranges, ends included: any rating scale from 0 to 100, times 1970 to 2100.
    for value in (0, 0.5, 4.5, 10, 100):
        assert FeedbackEvent(user_id="u", item_id="i", type="rating", value=value).value == value
    for timestamp in (0, 1.7e9, 4_102_444_800):
        assert FeedbackEvent(user_id="u", item_id="i", type="click", timestamp=timestamp).timestamp == timestamp


@pytest.mark.parametrize("fields", [
    {"type": "rating", "value": -0.5}, {"type": "rating", "value": 100.5}, {"type": "rating", "value": 1e308},
    {"type": "click", "timestamp": -1}, {"type": "click", "timestamp": 1e300},
    {"type": "click", "timestamp": True}, {"type": "rating", "value": True}, {"type": "click", "user_id": 7},
])
def test_out_of_range_or_mistyped_events(fields):
    with pytest.raises(pydantic.ValidationError):
        FeedbackEvent(**({"user_id": "u", "item_id": "i"} | fields))


def test_store_urls_never_show_secrets(tmp_path):
    from promptrec.serving.store import mask_secrets

    url = "postgresql+psycopg://bob:pa%40ss@db:5432/x?sslmode=require&password=qpw&sslpassword=spw&api_key=k1"
    assert mask_secrets(url) == (
        "postgresql+psycopg://bob:***@db:5432/x?sslmode=require&password=***&sslpassword=***&api_key=***"
    )
    assert mask_secrets("failed: host=db password=qpw user=bob", ["qpw"]) == "failed: host=db password=*** user=bob"
    assert mask_secrets("a driver quoting pa@ss", ["pa@ss"]) == "a driver quoting ***"
    with FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}?password=qpw") as store:
        assert "qpw" not in store.url and "password=***" in store.url and "qpw" not in repr(store)
    with pytest.raises(FeedbackStoreError) as err:
        FeedbackStore("postgresql://bob:pw1@db:notaport/x?token=tk1")
    assert "pw1" not in str(err.value) and "tk1" not in str(err.value) and err.value.__cause__ is None


def test_other_processes_write_concurrently_and_a_fresh_store_sees_it(tmp_path):
    # Three processes open a brand-new file at once (racing to migrate) and write overlapping ids.
    path = tmp_path / "shared.db"
    code = textwrap.dedent(
        """
        import sys
        from promptrec.serving.store import FeedbackEvent, FeedbackStore
        with FeedbackStore(sys.argv[1]) as s:
            batch = [FeedbackEvent(event_id=f"e{i}", user_id="u", item_id=f"i{i}", type="click", timestamp=i)
                     for i in range(int(sys.argv[2]), int(sys.argv[2]) + 20)]
            print(s.add(batch).stored)
        """
    )
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path), str(start)], stdout=subprocess.PIPE, text=True, env=env
        )
        for start in (0, 10, 20)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert sum(int(out) for out in outputs) == 40  # e0..e39, each stored by exactly one process
    with FeedbackStore(path) as fresh:
        assert fresh.count() == 40
        assert [e.event_id for e in fresh.user_events("u")] == [f"e{i}" for i in range(40)]


def test_ping_url_masking_and_errors(tmp_path):
    s = FeedbackStore(tmp_path / "gone" / "p.db")
    assert s.ping()
    s.close()
    for f in (tmp_path / "gone").iterdir():
        f.unlink()
    (tmp_path / "gone").rmdir()
    assert not s.ping()  # a probe reports, it does not raise
    assert "secret" not in repr(s)
    with pytest.raises(FeedbackStoreError, match=r"bob:\*\*\*@127\.0\.0\.1:1/db") as info:
        FeedbackStore("postgresql://bob:secret@127.0.0.1:1/db")  # nothing listens on port 1
    assert "secret" not in str(info.value)
    with pytest.raises(FeedbackStoreError, match=r"bob:\*\*\*@host:port") as info:
        FeedbackStore("postgresql://bob:secret@host:port/db")
    assert "secret" not in str(info.value)
    with pytest.raises(FeedbackStoreError, match="unsupported"):
        FeedbackStore("mysql://bob:secret@localhost/db")
    (tmp_path / "garbage.db").write_bytes(b"not a database " * 100)
    with pytest.raises(FeedbackStoreError, match="garbage.db"):
        FeedbackStore(tmp_path / "garbage.db")
    (tmp_path / "afile").write_text("")
    with pytest.raises(FeedbackStoreError, match="afile"):
        FeedbackStore(tmp_path / "afile" / "x.db")
