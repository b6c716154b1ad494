"""The `nas` command's contract with users: clear one-line errors, no tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest


def nas(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nas", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_help_lists_the_commands():
    result = nas("--help")
    assert result.returncode == 0
    for command in ("search", "export", "dashboard", "spaces", "show", "trials", "status"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--space", "no-such-space"], "no-such-space"),
        (["--trials", "0"], "--trials"),
        (["--sampler", "annealing"], "--sampler"),
        (["--objectives", "accuracy,beauty"], "beauty"),
        (["--storage", "postgresql://postgres:s3cret@127.0.0.1:1/nodb"], "127.0.0.1:1"),
        (["--storage", "mysqlx://nowhere/db"], "mysqlx"),
    ],
)
def test_bad_search_options_give_one_clear_line_and_exit_2(args, needle, tmp_path):
    result = nas("search", "--trials", "1", *args, cwd=tmp_path) if "--trials" not in args else nas("search", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert needle in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) <= 3


def test_export_of_unknown_study_is_a_clear_error(tmp_path):
    result = nas("export", "nope", "--storage", f"sqlite:///{tmp_path/'x.db'}", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "nope" in result.stderr and "Traceback" not in result.stderr
