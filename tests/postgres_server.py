"""A throwaway PostgreSQL server on loopback, for the tests and the serving benchmarks.

``ThrowawayPostgres()`` runs ``initdb`` into a fresh temporary folder and starts ``postgres`` on
127.0.0.1 on a free port (no Unix socket, trust authentication for the one superuser
``promptrec``), ``url`` is its SQLAlchemy URL, ``stop()`` shuts it down and deletes the folder.
PostgreSQL refuses to run as root, so under root the server runs as the unprivileged ``nobody``.
About two seconds from nothing to ready.

``fresh_schema(url)``: the URL of an empty schema of its own in that database (libpq's
``options=-csearch_path=...``), so that tests can share one server, or a server given in
``PROMPTREC_TEST_POSTGRES_URL``, and still each start from an empty store.

The binaries are looked up on ``PATH`` and in Debian's ``/usr/lib/postgresql/VERSION/bin``;
``binaries()`` is None where there are none.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Self

UNPRIVILEGED_USER = "nobody"


def binaries() -> Path | None:
    """The folder with ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    candidates = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) for x in Path(p).parent.name.split(".") if x.isdigit()])
    candidates += [Path(p) for p in reversed(versions)]
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    """A PostgreSQL server that lives as long as this object (``stop()`` or the context manager).

    durable=False turns off fsync and synchronous commit: faster, and still exact for anything
    short of a crash of the PostgreSQL server itself (the tests kill serving replicas, never it).
    """

    def __init__(self, durable: bool = False, max_connections: int = 200) -> None:
        folder = binaries()
        if folder is None:
            raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl, postgres) on PATH or in /usr/lib/postgresql")
        self._bin = folder
        self._as: dict = {}
        if os.geteuid() == 0:  # postgres will not run as root
            try:
                account = pwd.getpwnam(UNPRIVILEGED_USER)
            except KeyError:
                raise RuntimeError(f"running as root, and there is no user {UNPRIVILEGED_USER!r} to run "
                                   "PostgreSQL as (it refuses root)") from None
            self._as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self.root = Path(tempfile.mkdtemp(prefix="promptrec-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        if self._as:
            os.chown(self.root, self._as["user"], self._as["group"])
        try:
            self._run("initdb", "-D", str(self.data), "-U", "promptrec", "--auth=trust", "-E", "UTF8",
                      "--no-locale", "--no-sync")
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "unix_socket_directories": "''",
                "max_connections": str(max_connections),
                "fsync": "on" if durable else "off",
                "synchronous_commit": "on" if durable else "off",
                "full_page_writes": "on" if durable else "off",
                "shared_buffers": "'64MB'",
            }
            for attempt in range(3):  # a free port can be taken between the check and the bind
                self.port = _free_port()
                conf = "\n".join(f"{k} = {v}" for k, v in {**settings, "port": str(self.port)}.items())
                (self.data / "postgresql.auto.conf").write_text(conf + "\n")
                try:
                    self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.url = f"postgresql+psycopg://promptrec@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run([str(self._bin / program), *args], check=False, env=self._env, cwd=self.root,
                                capture_output=True, text=True, timeout=120, **self._as)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr[-2000:]}\n{log}")

    def stop(self) -> None:
        if self.data.exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def fresh_schema(url: str, prefix: str = "t") -> str:
    """``url`` with an empty schema of its own first on the search path: the store's tables (and
    alembic's version table) go there, apart from everything else in the database."""
    import sqlalchemy as sa

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    parsed = sa.make_url(url).set(drivername="postgresql+psycopg")  # the driver promptrec installs
    engine = sa.create_engine(parsed)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    finally:
        engine.dispose()
    return parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


def drop_schema(url: str) -> None:
    """Drop the schema that :func:`fresh_schema` made for ``url``, and everything in it."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    schema = parsed.query["options"].removeprefix("-csearch_path=")
    engine = sa.create_engine(parsed.difference_update_query(["options"]))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


__all__ = ["ThrowawayPostgres", "binaries", "drop_schema", "fresh_schema"]
