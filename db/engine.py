"""Storage URLs, engines and error translation: the only place that knows SQLite from PostgreSQL."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

ALLOWED_URLS = "`sqlite:///path.db` or `postgresql://user:pass@host:5432/db`"
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10
# Execution option that makes a SQLite transaction start with BEGIN IMMEDIATE (write lock
# up front, so concurrent writers queue on the busy timeout instead of failing mid-way).
WRITE_OPTION = "resnas_write"


class StoreError(Exception):
    """Anything the store could not do, with a readable message (passwords masked)."""


# Connection parameters whose values are secrets, wherever they appear: libpq's and
# psycopg's keywords, in a URL's query (`?password=`) or a conninfo string (`password=...`).
SECRET_KEYS = ("password", "sslpassword")
_USERINFO = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_SECRET_PARAM = re.compile(r"(?i)\b((?:ssl)?password)\s*=\s*('[^']*'|[^&\s]*)")


def mask_raw_url(text: str) -> str:
    """Hide `user:password@` and `password=...` / `sslpassword=...` in any text (a URL that
    may not even parse, a conninfo string, a driver's error message)."""
    return _SECRET_PARAM.sub(r"\1=***", _USERINFO.sub(r"\1***@", text))


def display_url(url: URL | str) -> str:
    """The URL as it may appear in logs, errors, output and records: the password and any
    secret query parameter replaced by `***`. The one masking function of resnas."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except (ArgumentError, ValueError):  # e.g. a port that is not a number
            return mask_raw_url(url)
    secret = {k: "***" for k in url.query if k.lower() in SECRET_KEYS}
    if secret:
        url = url.update_query_dict(secret)
    return mask_raw_url(url.render_as_string(hide_password=True).replace("%2A%2A%2A", "***"))


def scrub(text: str, url: URL | None) -> str:
    """Remove the secrets of `url` from a message, wherever a driver may have put them."""
    text = mask_raw_url(text)
    if url is not None:
        values = [url.password, *(url.query[k] for k in url.query if k.lower() in SECRET_KEYS)]
        for value in values:
            for one in (value,) if isinstance(value, str) else (value or ()):
                if one:
                    text = text.replace(str(one), "***")
    return text


def backend_of(url: URL) -> str:
    """`sqlite` or `postgresql`."""
    return url.get_backend_name()


def normalize_url(url: str | URL) -> URL:
    """Validate a storage URL and pin its driver (psycopg 3 for PostgreSQL).

    Raises:
        StoreError: unknown scheme, unsupported driver, in-memory SQLite, or a SQLite file in
            a directory that does not exist.
    """
    raw = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise StoreError(
            f"`storage` got {mask_raw_url(str(raw))!r}, which is not a database URL; "
            f"allowed: {ALLOWED_URLS}"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    shown = display_url(parsed)
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg", "psycopg2"):
            raise StoreError(
                f"`storage` got {shown!r}: driver `{driver}` is not supported; "
                f"PostgreSQL is reached with psycopg 3; allowed: {ALLOWED_URLS}"
            )
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise StoreError(
                f"`storage` got {shown!r}: driver `{driver}` is not supported; "
                f"allowed: {ALLOWED_URLS}"
            )
        database = parsed.database or ""
        if database in ("", ":memory:") or "mode=memory" in database:
            raise StoreError(
                f"`storage` got {shown!r}: an in-memory SQLite database vanishes with its "
                f"connection; give a file path; allowed: {ALLOWED_URLS}"
            )
        if not parsed.query.get("uri") and not database.startswith("file:"):
            parent = Path(database).expanduser().parent
            if not parent.is_dir():
                raise StoreError(
                    f"`storage` got {shown!r}: directory {str(parent)!r} does not exist; "
                    f"create it first; allowed: {ALLOWED_URLS}"
                )
        return parsed.set(drivername="sqlite")
    raise StoreError(
        f"`storage` got {shown!r}: unknown database scheme `{parsed.drivername}`; "
        f"allowed: {ALLOWED_URLS}"
    )


def _journal_wal(cursor: Any) -> None:
    """Put the file in WAL mode (it stays so). Switching needs the file to itself and does
    not wait on the busy timeout: several processes opening a new store at once got
    "database is locked" here. A file already in WAL is left alone; else retry until the
    busy timeout."""
    import sqlite3

    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def create_store_engine(url: URL, *, migration: bool = False) -> Engine:
    """An engine set up for the store.

    SQLite: WAL journal, 30 s busy timeout, foreign keys on (off for migrations, which copy
    tables), and SQLAlchemy-issued BEGIN so that DDL and reads are truly transactional.
    PostgreSQL: psycopg 3, `pool_pre_ping` (idle connections get dropped, Optuna #5600).
    """
    if backend_of(url) == "sqlite":
        engine = sa.create_engine(url, poolclass=NullPool if migration else None)
        foreign_keys = "OFF" if migration else "ON"

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API object
            # Take transaction control away from the sqlite3 module (see the `begin` hook).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _journal_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute(f"PRAGMA foreign_keys = {foreign_keys}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn) -> None:  # noqa: ANN001 - sqlalchemy Connection
            write = conn.get_execution_options().get(WRITE_OPTION, migration)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    return sa.create_engine(
        url,
        pool_pre_ping=True,
        poolclass=NullPool if migration else None,
        connect_args=pg_connect_args(url),
    )


def pg_connect_args(url: URL) -> dict[str, Any]:
    """psycopg connection arguments for the store's and Optuna's engines."""
    args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    return args


def describe_error(exc: BaseException, url: URL | None) -> str:
    """One readable line for a database error: the driver's own words, password scrubbed."""
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(line.strip() for line in str(orig).splitlines() if line.strip())
    text = re.sub(r"\(Background on this error at: [^)]*\)", "", text).strip()
    if len(text) > 400:
        text = text[:400] + " ..."
    return scrub(f"{type(orig).__name__}: {text}", url)


def store_error(what: str, exc: SQLAlchemyError, url: URL, *, opened: bool = False) -> StoreError:
    """The StoreError for `exc`, naming the (masked) URL and what failed.

    `opened`: the store has worked on this URL before, so a failure to connect is no sign of
    a wrong URL and gets no hint to check it."""
    reason = describe_error(exc, url)
    # A DB-API error without a statement happened while connecting (SQLAlchemy wraps
    # connect failures that way): wrong host, port, database name, credentials, file.
    if not opened and isinstance(exc, sa.exc.DBAPIError) and exc.statement is None:
        return StoreError(
            f"cannot open storage {display_url(url)} while {what}: {reason}; "
            f"check the URL; allowed: {ALLOWED_URLS}"
        )
    return StoreError(f"{what} failed on {display_url(url)}: {reason}")
