"""Transient database faults (a server restart, a dropped connection, a locked or full SQLite
file): telling them from real errors, and riding them out with bounded retries."""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from db.engine import StoreError, describe_error, display_url

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BUDGET_S = 60.0
# Backoff: the first wait, its growth and its cap. A restarting PostgreSQL is back within
# seconds; waiting up to 5 s between tries keeps a minute-long outage to about 15 tries.
FIRST_WAIT_S = 0.25
MAX_WAIT_S = 5.0

# SQLite's primary result codes for a file that is busy, locked, unreadable or full: the
# condition passes (another writer commits, space is freed) and the same statement then works.
# "no such table" and constraint failures have other codes (SQLITE_ERROR, SQLITE_CONSTRAINT).
_SQLITE_TRANSIENT_CODES = {5, 6, 10, 13}  # BUSY, LOCKED, IOERR, FULL
_SQLITE_TRANSIENT_WORDS = ("database is locked", "database table is locked", "disk i/o error",
                           "database or disk is full")


class DatabaseUnavailable(StoreError):
    """The database stopped answering for the whole retry budget."""


def _sqlite_transient(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)  # Python >= 3.11
    if isinstance(code, int) and (code & 0xFF) in _SQLITE_TRANSIENT_CODES:
        return True
    text = str(error).lower()
    return any(words in text for words in _SQLITE_TRANSIENT_WORDS)


def _transient_link(exc: BaseException) -> bool:
    """Whether `exc` itself (not its chain) is a connection-level failure."""
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc.orig, sqlite3.Error):
            # SQLite reports every failure as OperationalError, "no such table" included,
            # and InterfaceError means a parameter it cannot bind: the code decides.
            return _sqlite_transient(exc.orig)
        return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))
    if isinstance(exc, sa.exc.DisconnectionError):
        return True
    if isinstance(exc, sqlite3.Error):  # a driver error that SQLAlchemy did not wrap
        return _sqlite_transient(exc)
    # psycopg's own errors, unwrapped, by their DB-API class (db does not import psycopg).
    return type(exc).__module__.startswith("psycopg") and any(
        cls.__name__ in ("OperationalError", "InterfaceError") for cls in type(exc).__mro__
    )


def transient_cause(exc: BaseException) -> BaseException | None:
    """The connection-level failure in `exc`'s chain (`__cause__`, else `__context__` unless
    suppressed by `raise ... from None`), or None. Wrappers such as Optuna's
    StorageInternalError or our StoreError keep the driver's error in that chain."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if _transient_link(link):
            return link
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is (or wraps) a connection-level failure worth retrying: the server went
    away or refused us, or a SQLite file was locked, unreadable or full. Integrity and
    programming errors, and a missing table, are not."""
    return transient_cause(exc) is not None


def backoff_s(attempt: int) -> float:
    """The wait before retry number `attempt` (1, 2, ...): 0.25 s doubling up to 5 s, less up
    to 20 % at random so that clients which failed together do not return together."""
    base = min(MAX_WAIT_S, FIRST_WAIT_S * 2 ** min(attempt - 1, 30))
    return base * (1.0 - 0.2 * random.random())


def _as_url(url: URL | str | None) -> URL | None:
    if url is None or isinstance(url, URL):
        return url
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        return None


def unavailable_message(what: str, exc: BaseException, url: URL | str | None,
                        budget_s: float) -> str:
    """The message of a `DatabaseUnavailable`: where, for how long, while doing what, and the
    driver's own words (password scrubbed)."""
    cause = transient_cause(exc) or exc
    where = "the database" if url is None else f"the database at {display_url(url)}"
    return (
        f"{where} stopped answering for {budget_s:g} s while {what}: "
        f"{describe_error(cause, _as_url(url))}; nothing finished is lost — run the same "
        "command again to resume once it is back"
    )


def retry_call(
    fn: Callable[[], T],
    *,
    budget_s: float = DEFAULT_BUDGET_S,
    what: str,
    url: URL | str | None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """`fn()`, tried again with bounded exponential backoff while it fails with a transient
    error (`is_transient`) and `budget_s` seconds have not passed since the first try.

    `fn` must be safe to run again after a failure: one whole transaction, which rolled back,
    or whose commit, if it landed before the connection dropped, is harmless to repeat.

    Args:
        fn: the work; called with no arguments.
        budget_s: how long the database may stay away, in seconds.
        what: what `fn` does, for the message ("ending search 1").
        url: the database's URL, shown masked.
        sleep, clock: injectable for tests.
        on_retry: `on_retry(attempt, exc, wait_s)` before each wait (attempt 1, 2, ...).

    Raises:
        DatabaseUnavailable: still failing transiently when the budget ran out.
        Exception: any non-transient error of `fn`, at once and unchanged.
    """
    start = clock()
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            remaining = budget_s - (clock() - start)
            if remaining <= 0:
                raise DatabaseUnavailable(unavailable_message(what, exc, url, budget_s)) from exc
            wait = min(backoff_s(attempt), remaining)
            if on_retry is not None:
                on_retry(attempt, exc, wait)
            sleep(wait)
