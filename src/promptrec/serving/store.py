"""A durable, idempotent store of user feedback events (clicks, purchases, ratings, skips).

Design:

* **Durable on return.** :meth:`FeedbackStore.add` returns only after its transaction has
  committed, so an acknowledged event survives a crash. On SQLite every connection runs with
  ``journal_mode=WAL`` and ``synchronous=FULL``: WAL lets readers work while one writer appends,
  and FULL fsyncs the log on every commit, which makes a returned commit survive power loss, not
  only a killed process (WAL with the usual NORMAL may lose the last commits on power loss).
* **Idempotent.** Clients retry on timeouts, so every event has an id and the table has a unique
  constraint on it; inserts use ``INSERT ... ON CONFLICT DO NOTHING``, which is race-free between
  concurrent writers (threads, worker processes) where a check-then-insert would not be. An event
  without a client id gets a deterministic one, a hash of its content, so a retried post with the
  same timestamp is still stored once. First write wins: a reused id never overwrites.
* **Versioned schema.** Alembic migrations (shipped in ``migrations/``) run to head whenever a
  store opens, so a deployed database is upgraded in place instead of recreated, and the
  ``alembic_version`` table says which schema a file has. The same code serves SQLite (one host)
  and PostgreSQL (several server hosts).
* **Several writers.** Server replicas on one PostgreSQL database share nothing but it: servers
  starting together take turns at the migrations (an advisory lock), a batch is inserted in
  event-id order so that writers with overlapping batches cannot deadlock, and ``seq`` (handed
  out at insert time, so not the commit order) is never taken for "the newest event": a cache
  keys on :func:`events_fingerprint` of the events it read instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import quote

import pandas as pd
import pydantic
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy.dialects import postgresql, sqlite

EVENT_TYPES = ("click", "purchase", "rating", "skip")
COLUMNS = ["event_id", "user_id", "item_id", "type", "value", "timestamp", "received_at", "seq"]
MIGRATIONS = Path(__file__).with_name("migrations")

# Mirrors migrations/versions: queries are built from this, the schema itself comes from alembic.
metadata = sa.MetaData()
feedback_events = sa.Table(
    "feedback_events",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(160), nullable=False),
    sa.Column("user_id", sa.String(256), nullable=False),
    sa.Column("item_id", sa.String(256), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("value", sa.Float(), nullable=True),
    sa.Column("timestamp", sa.Float(), nullable=False),
    sa.Column("received_at", sa.Float(), nullable=False),
    sa.UniqueConstraint("event_id", name="uq_feedback_events_event_id"),
    sa.Index("ix_feedback_events_user_id_timestamp", "user_id", "timestamp"),
    sa.Index("ix_feedback_events_timestamp", "timestamp"),
    sqlite_autoincrement=True,
)

Id = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=256)]
# The documented ranges: wide enough for any rating scale (1-5, 0.5-5, 1-10, 0-100) and any
# real event time, narrow enough that a value is never an overflow waiting to happen.
RATING_RANGE = (0.0, 100.0)
TIMESTAMP_RANGE = (0.0, 4_102_444_800.0)  # unix seconds, 1970-01-01 to 2100-01-01 UTC
Rating = Annotated[float, pydantic.Field(ge=RATING_RANGE[0], le=RATING_RANGE[1], allow_inf_nan=False)]
Timestamp = Annotated[float, pydantic.Field(ge=TIMESTAMP_RANGE[0], le=TIMESTAMP_RANGE[1], allow_inf_nan=False)]


class FeedbackStoreError(RuntimeError):
    """The store cannot be opened: a bad URL, an unsupported database, or one that is unreachable."""


class FeedbackEvent(pydantic.BaseModel):
    """One piece of feedback as a client posts it. Strict types: ``true`` is not a number."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    event_id: Annotated[str, pydantic.StringConstraints(min_length=1, max_length=128)] | None = None
    user_id: Id
    item_id: Id
    type: Literal["click", "purchase", "rating", "skip"]
    value: Rating | None = None  # the rating (type "rating"); ignored for the other types
    timestamp: Timestamp | None = None  # unix seconds; None: when the server received it

    @pydantic.model_validator(mode="after")
    def _rating_has_value(self) -> FeedbackEvent:
        if self.type == "rating" and self.value is None:
            raise ValueError("a rating needs a value")
        return self

    def resolved_id(self) -> str:
        """The id the event is stored under: ``event_id`` when the client chose one.

        Otherwise ``"h:"`` + the sha256 of the canonical JSON of (user_id, item_id, type, value,
        timestamp). A retried post without ids therefore dedupes as long as it carries a
        timestamp; without one, :meth:`FeedbackStore.add` first fills in the receive time, so
        posts received at different times stay distinct events. Calling this on an event with
        neither an id nor a timestamp raises ``ValueError``: its id is not known yet.
        """
        if self.event_id is not None:
            return self.event_id
        if self.timestamp is None:
            raise ValueError("an event without event_id needs a timestamp for a deterministic id")
        value = None if self.value is None else float(self.value)
        content = [self.user_id, self.item_id, self.type, value, float(self.timestamp)]
        canonical = json.dumps(content, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return "h:" + hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class AddResult:
    stored: int  # newly inserted rows
    duplicates: int  # events of the request that were already stored or repeated within it
    event_ids: list[str]  # resolved ids, in request order


@dataclass(frozen=True)
class StoredEvent:
    event_id: str
    user_id: str
    item_id: str
    type: str
    value: float | None
    timestamp: float
    received_at: float
    seq: int  # insertion order, a tie-breaker for equal timestamps (not a gap-free commit order)


def events_fingerprint(events: Iterable[StoredEvent]) -> bytes:
    """A digest that changes whenever the set of ``events`` does: what an answer cache keys on.

    Stored events are immutable (first write wins, nothing is updated or deleted in place) and
    ``seq`` is their primary key, so the set of seqs names the events exactly. Not the highest
    seq: PostgreSQL hands seqs out at insert time, not at commit, so with several writers
    (replicas, or threads of one) a lower seq can commit after a higher one, and a user's events
    change while their highest seq stays the same.
    """
    seqs = sorted(e.seq for e in events)
    return hashlib.blake2b(array("q", seqs).tobytes(), digest_size=16).digest()


# scheme://user:PASSWORD@host  and  ?password=...&token=... (also libpq's "password=... " form)
_USERINFO = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^/?#@\s:]*:)[^/?#\s]*@")
_SECRET_NAME = r"[\w.-]*(?:pass|pwd|secret|token|key|auth|cred)[\w.-]*"
_SECRET_PARAM = re.compile(rf"(?P<head>(?:^|[?&;\s]){_SECRET_NAME}=)(?P<value>[^&;#\s]*)", re.IGNORECASE)
MASK = "***"


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL password (user info and secret-looking query parameters such as
    ``password``, ``sslpassword``, ``token``, ``api_key``) replaced by ``***``; ``secrets``: literal
    values to hide wherever they occur (a driver's error message may quote them)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _SECRET_PARAM.sub(lambda m: m["head"] + (MASK if m["value"] else ""), text)


def url_secrets(url: sa.URL) -> list[str]:
    """The literal secrets of a URL: its password and the values of secret-looking query
    parameters, so that a driver's error message that quotes one can be masked too."""
    values = [url.password] if url.password else []
    for name, value in url.query.items():
        if re.fullmatch(_SECRET_NAME, name, re.IGNORECASE):
            values += [value] if isinstance(value, str) else list(value)
    # As given and as written in a URL (percent-encoded): messages may quote either form.
    return [form for v in values if v for form in {str(v), quote(str(v), safe="")}]


def _parse_url(url: str | os.PathLike | None) -> sa.URL:
    if url is None or isinstance(url, os.PathLike) or "://" not in url:
        parsed = sa.URL.create("sqlite+pysqlite", database=str(Path(url or "feedback.db").expanduser().absolute()))
    else:
        try:
            parsed = sa.make_url(url)
        except Exception as exc:  # noqa: BLE001  (re-raised below, masked, without the chain)
            # from None: the parser's own exception quotes the URL, password and all.
            raise FeedbackStoreError(f"invalid feedback store URL {mask_secrets(url)}: {mask_secrets(str(exc), [url])}") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # the driver installed with us, not psycopg2
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        try:
            Path(parsed.database).expanduser().absolute().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FeedbackStoreError(f"cannot create the folder for feedback store {parsed.database}: {exc}") from exc
    return parsed


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the driver (it would not BEGIN before DDL, leaving
    # migrations non-atomic); _on_sqlite_begin emits BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 5000")  # first: switching to WAL may wait for a lock
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.close()


def _on_sqlite_begin(connection: sa.Connection) -> None:
    # Writers take the write lock up front: a deferred transaction that reads and then writes can
    # fail at once with SQLITE_BUSY instead of waiting out busy_timeout. A single SELECT needs no
    # BEGIN: SQLite runs it in a consistent snapshot of its own.
    options = connection.get_execution_options()
    if options.get("promptrec_single_read", False):
        return
    connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get("promptrec_write", False) else "BEGIN")


class FeedbackStore:
    """Feedback events in SQLite (a file path or ``sqlite:///`` URL) or PostgreSQL (``postgresql+psycopg://``)."""

    def __init__(self, url: str | os.PathLike | None = None) -> None:
        self._url = _parse_url(url)
        self._secrets = url_secrets(self._url)
        backend = self._url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise FeedbackStoreError(f"unsupported feedback store database {self.url}: use sqlite or postgresql")
        connect_args = {}
        if backend == "postgresql" and "connect_timeout" not in self._url.query:
            connect_args["connect_timeout"] = 10  # fail a readiness probe, do not hang it
        try:
            # A database server can drop pooled connections; an SQLite file cannot, and a ping
            # per read would only add a round trip to every request.
            self._engine = sa.create_engine(self._url, pool_pre_ping=backend == "postgresql", connect_args=connect_args)
        except Exception as exc:  # noqa: BLE001  (re-raised below, masked, without the chain)
            raise FeedbackStoreError(f"cannot use feedback store URL {self.url}: {self._masked(exc)}") from None
        if backend == "sqlite":
            sa.event.listen(self._engine, "connect", _on_sqlite_connect)
            sa.event.listen(self._engine, "begin", _on_sqlite_begin)
        self._insert = (sqlite.insert if backend == "sqlite" else postgresql.insert)(feedback_events)
        # A user's events from a local SQLite file in WAL mode: an indexed read from the page
        # cache that no writer blocks, about 0.1 ms. Cheaper than handing it to a worker thread
        # (a queue, a wake-up and two interpreter-lock handoffs per request), so the server reads
        # inline; a database server's read is a network round trip, and goes to a thread.
        self.reads_inline = backend == "sqlite"
        # Inline reads keep one connection per thread: checking a connection out of the pool and
        # back in per read costs twice the indexed SELECT itself (measured: 0.33 ms a read
        # against 0.10 ms on a kept connection).
        self._readers = threading.local()
        self._kept: list[sa.Connection] = []
        self._kept_lock = threading.Lock()
        t = feedback_events.c
        newest_first = (
            sa.select(*(t[c] for c in COLUMNS))
            .where(t.user_id == sa.bindparam("user_id"))
            .order_by(t.timestamp.desc(), t.seq.desc())
        )
        self._user_events = newest_first
        self._user_events_limited = newest_first.limit(sa.bindparam("limit", type_=sa.Integer))
        # The inline read runs these on the driver's connection itself: SQLAlchemy's statement
        # execution (cache lookup, parameter processing, result wrapping) cost a served request
        # 0.1 ms, as much as the indexed read (columns are strings and floats, which the driver
        # returns as SQLAlchemy would).
        self._raw_reads = {}
        if self.reads_inline:
            for limited, statement in ((False, self._user_events), (True, self._user_events_limited)):
                compiled = statement.compile(dialect=self._engine.dialect)
                fixed = compiled.construct_params({"user_id": "", "limit": 0})  # and any literal (OFFSET 0)
                self._raw_reads[limited] = (str(compiled), compiled.positiontup, fixed)
        try:
            self._migrate()
        except (sa.exc.SQLAlchemyError, CommandError) as exc:
            self._engine.dispose()
            raise FeedbackStoreError(f"cannot open feedback store {self.url}: {self._masked(exc)}") from None

    @property
    def url(self) -> str:
        """The URL with its password and secret query parameters (``?password=``, ``token``, ...)
        shown as ``***``: what logs, errors and ``/info`` show."""
        return mask_secrets(self._url.render_as_string(hide_password=True), self._secrets)

    def _masked(self, exc: BaseException) -> str:
        # Without the chained exception (raised from None), whose text may hold the password.
        return mask_secrets(str(exc), self._secrets)

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._engine.connect().execution_options(promptrec_write=True) as conn, conn.begin():
            yield conn

    def _migrate(self) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
        cfg.set_main_option("path_separator", "os")
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                # Server workers starting together must not race to create the same tables.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7301994001)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def add(self, events: Sequence[FeedbackEvent], received_at: float | None = None) -> AddResult:
        """Store ``events`` in one transaction, skipping ids already stored; returns after COMMIT."""
        received_at = time.time() if received_at is None else float(received_at)
        if not math.isfinite(received_at):
            raise ValueError(f"received_at must be finite, got {received_at}")
        ids: list[str] = []
        rows: dict[str, dict[str, Any]] = {}
        for event in events:
            if event.timestamp is None:
                event = event.model_copy(update={"timestamp": received_at})
            event_id = event.resolved_id()
            ids.append(event_id)
            row = event.model_dump(exclude={"event_id"}) | {"event_id": event_id, "received_at": received_at}
            rows.setdefault(event_id, row)  # a repeat inside the batch is a duplicate too
        stored = 0
        if rows:
            # RETURNING lists only the rows ON CONFLICT DO NOTHING really inserted.
            statement = self._insert.on_conflict_do_nothing(index_elements=["event_id"])
            # In id order: concurrent writers (server replicas, a client retrying through another
            # replica) whose batches share ids then take the ids' index locks in one global order.
            # In request order, one could hold x and wait for y while the other holds y and waits
            # for x, and PostgreSQL would abort one of them (deadlock detected) with a 500.
            ordered = [rows[i] for i in sorted(rows)]
            with self._write() as conn:
                stored = len(conn.execute(statement.returning(feedback_events.c.seq), ordered).all())
        return AddResult(stored=stored, duplicates=len(ids) - stored, event_ids=ids)

    def user_events(self, user_id: str, limit: int | None = None) -> list[StoredEvent]:
        """The user's events, oldest first by (timestamp, seq); ``limit`` keeps the newest ones."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        # Runs for every /recommend: the statement is built once, and SQLite skips its BEGIN.
        params = {"user_id": user_id, "limit": limit}
        if self.reads_inline:
            # One SELECT in SQLite's autocommit mode (the driver's own transaction handling is
            # off, see _on_sqlite_connect): a consistent snapshot without a BEGIN.
            sql, names, fixed = self._raw_reads[limit is not None]
            values = fixed | params
            rows = self._reader().connection.driver_connection.execute(sql, [values[n] for n in names]).fetchall()
        else:
            query = self._user_events if limit is None else self._user_events_limited
            with self._engine.connect().execution_options(promptrec_single_read=True) as conn:
                rows = conn.execute(query, params).all()
        return [StoredEvent(*row) for row in reversed(rows)]

    def _reader(self) -> sa.Connection:
        """This thread's kept connection, whose driver connection the inline read uses (SQLite only;
        see ``reads_inline``)."""
        conn = getattr(self._readers, "conn", None)
        if conn is None or conn.closed:
            conn = self._engine.connect()
            self._readers.conn = conn
            with self._kept_lock:
                self._kept.append(conn)
        return conn

    def events_since(self, since: float | None = None, until: float | None = None) -> pd.DataFrame:
        """Events with ``since <= timestamp < until`` (either bound optional), by (timestamp, seq)."""
        t = feedback_events.c
        query = sa.select(*(t[c] for c in COLUMNS)).order_by(t.timestamp, t.seq)
        if since is not None:
            query = query.where(t.timestamp >= since)
        if until is not None:
            query = query.where(t.timestamp < until)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        frame = pd.DataFrame([tuple(r) for r in rows], columns=COLUMNS)
        return frame.astype({"value": "float64", "timestamp": "float64", "received_at": "float64", "seq": "int64"})

    def count(self) -> int:
        with self._engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(feedback_events)).scalar_one()

    def has(self, event_ids: Sequence[str]) -> set[str]:
        """Which of ``event_ids`` are stored."""
        wanted = list(dict.fromkeys(event_ids))
        found: set[str] = set()
        column = feedback_events.c.event_id
        with self._engine.connect() as conn:
            for start in range(0, len(wanted), 500):  # stay under bound-parameter limits
                found.update(conn.scalars(sa.select(column).where(column.in_(wanted[start : start + 500]))))
        return found

    def ping(self) -> bool:
        """Whether the database answers ``SELECT 1`` (for a readiness probe, which must not raise)."""
        try:
            with self._engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except (sa.exc.SQLAlchemyError, OSError):
            return False

    def close(self) -> None:
        with self._kept_lock:
            kept, self._kept = self._kept, []
        for conn in kept:
            conn.close()  # a closed connection is reopened by the next read of its thread
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeedbackStore({self.url!r})"
