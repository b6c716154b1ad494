"""Storage URLs: what is accepted, what is refused with a useful message, passwords never shown."""

from __future__ import annotations

import subprocess
import sys
import traceback

import pytest

import db
from db import Store, StoreError
from db.engine import normalize_url

ALLOWED = "sqlite:///path.db"


def _full_text(exc: BaseException | None) -> str:
    """Every message of the exception chain (what a user or a log could ever see)."""
    parts = []
    while exc is not None:
        parts += [str(exc), repr(exc), *traceback.format_exception_only(exc)]
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://user:pw@host/db", "unknown database scheme `mysql`"),
        ("not a url", "not a database URL"),
        ("postgresql+asyncpg://u@h/db", "driver `asyncpg` is not supported"),
        ("sqlite://", "in-memory"),
        ("sqlite:////no/such/dir/nas.db", "directory '/no/such/dir' does not exist"),
    ],
)
def test_bad_urls_say_what_is_wrong_and_what_is_allowed(url, expected):
    with pytest.raises(StoreError) as info:
        Store(url)
    assert expected in str(info.value)
    assert ALLOWED in str(info.value) or "allowed" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@h:5432/db",
        "postgres://u:p@h:5432/db",
        "postgresql+psycopg2://u:p@h:5432/db",
        "postgresql+psycopg://u:p@h:5432/db",
    ],
)
def test_postgres_urls_map_to_psycopg3(url):
    assert normalize_url(url).drivername == "postgresql+psycopg"


@pytest.mark.postgres
def test_unreachable_host_and_password_never_shown(pg_url):
    with pytest.raises(StoreError) as info:
        Store("postgresql://postgres:s3cret@127.0.0.1:5432/nodb")
    text = _full_text(info.value)
    assert "s3cret" not in text
    assert "postgres:***@127.0.0.1:5432/nodb" in str(info.value)
    assert "does not exist" in str(info.value) and ALLOWED in str(info.value)

    with pytest.raises(StoreError) as info:
        Store("postgresql://postgres:s3cret@127.0.0.1:1/x")
    assert "s3cret" not in _full_text(info.value)
    assert "cannot open storage" in str(info.value)

    with pytest.raises(StoreError) as info:
        db.upgrade("mysql://root:s3cret@db/x")
    assert "s3cret" not in _full_text(info.value)


@pytest.mark.postgres
def test_password_masked_on_a_working_store(pg_url, caplog):
    secret_url = pg_url.replace("postgresql+psycopg://postgres@", "postgres://postgres:s3cret@")
    caplog.set_level("DEBUG")
    store = Store(secret_url)  # trust auth: the password is ignored by the server
    try:
        assert "s3cret" not in store.display_url and "s3cret" not in repr(store)
        assert "***" in store.display_url
        with pytest.raises(StoreError) as info:
            store.heartbeat(12345)
        assert "s3cret" not in _full_text(info.value)
    finally:
        store.close()
    assert "s3cret" not in caplog.text


def test_import_db_needs_neither_torch_nor_optuna():
    code = (
        "import sys, db, db.views, db.migrate\n"
        "bad = [m for m in ('torch', 'optuna', 'ray', 'lightning') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


SECRET_FORMS = [
    "postgresql://u:S3cret@127.0.0.1:1/db",
    "postgresql://u:S3cret@127.0.0.1:1/db?sslmode=disable",
    "postgresql://u@127.0.0.1:1/db?password=S3cret",
    "postgresql://u@127.0.0.1:1/db?sslmode=require&sslpassword=S3cret",
    "postgresql:///db?host=127.0.0.1&port=1&password=S3cret",
    "postgresql://u:S3cret@[::1:1/db",  # does not parse: masked by hand
    "host=127.0.0.1 port=1 user=u password=S3cret dbname=db",  # a libpq conninfo string
    "host=127.0.0.1 password='S3cret' dbname=db",
]


@pytest.mark.parametrize("url", SECRET_FORMS)
def test_every_form_of_a_secret_is_masked_for_display_and_for_the_record(url):
    from nas.config import SearchConfig
    from nas.errors import mask_url

    for shown in (mask_url(url), db.engine.display_url(url), db.engine.mask_raw_url(url)):
        assert "S3cret" not in shown and "***" in shown, shown
    record = SearchConfig(storage=url).to_record()
    assert "S3cret" not in repr(record)


@pytest.mark.parametrize("url", [u for u in SECRET_FORMS if u.startswith("postgresql")])
def test_a_refused_connection_never_prints_the_secret(url, tmp_path):
    result = subprocess.run([sys.executable, "-m", "nas", "status", "--storage", url],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    out = result.stdout + result.stderr
    assert "S3cret" not in out and "Traceback" not in out
    assert len(result.stderr.strip().splitlines()) == 1
