"""`nas trials` / `nas status` output: machine-readable CSV and JSON, rich tables, clear errors."""

from __future__ import annotations

import csv
import io
import json

import pytest

from db import Store, StoreError
from nas.store_commands import print_status, print_trials
from tests.db.helpers import run


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")  # rich sizes tables to the (absent) terminal


@pytest.fixture
def store(sqlite_url):
    s = Store(sqlite_url)
    s.record_run(run("demo", 0, val_accuracy=0.5, params=1_234_567, extra={"k": 1}))
    source = s.record_run(run("demo", 1, val_accuracy=0.7))
    s.record_run(run("demo", 2, val_accuracy=0.7, cached_from=source))
    s.record_run(run("demo", 3, state="failed", reason="nan loss"))
    s.record_run(run("other;--", 0, val_accuracy=0.1))
    yield s
    s.close()


def test_csv_has_every_field_and_one_row_per_run(store):
    out = io.StringIO()
    print_trials(store, "demo", "csv", file=out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["trial_number"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[0]["params"] == "1234567" and json.loads(rows[0]["extra"]) == {"k": 1}
    assert rows[3]["reason"] == "nan loss" and rows[3]["val_accuracy"] == ""


def test_json_top_and_states(store):
    out = io.StringIO()
    print_trials(store, "demo", "json", states=["complete"], top=2, file=out)
    data = json.loads(out.getvalue())
    assert [d["trial_number"] for d in data] == [1, 2]
    assert data[1]["cached_from"] == data[0]["id"]


def test_table_shows_runs(store):
    out = io.StringIO()
    print_trials(store, "demo", file=out)
    text = out.getvalue()
    assert "nan loss" in text and "cached from trial 1" in text and "1.23M" in text


def test_unknown_study_lists_the_known_ones(store):
    with pytest.raises(StoreError, match=r"no such study .*known studies: 'demo', 'other;--'"):
        print_trials(store, "nope")


def test_status_one_row_per_study_with_running_searches(store):
    sid = store.start_search("demo", {}, host="box", pid=99)
    out = io.StringIO()
    print_status(store, file=out)
    text = out.getvalue()
    assert "demo" in text and "other;--" in text
    assert f"#{sid} box:99" in text and "heartbeat" in text
    store.end_search(sid, "finished")


def test_status_of_an_empty_store(sqlite_url):
    store = Store(sqlite_url)
    out = io.StringIO()
    print_status(store, file=out)
    assert "no studies" in out.getvalue()
    store.close()
