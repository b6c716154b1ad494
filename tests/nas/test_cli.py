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
        (["--storage", "postgresql://postgres:s3cret@[::1:1/nodb"], "not a database URL"),
        (["--study", "mine.retrain"], "reserved for the studies `nas retrain` records"),
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


def test_a_bad_config_file_is_rejected_before_ray_starts_naming_the_key(tmp_path):
    cfg = tmp_path / "search.yaml"
    cfg.write_text("study: x\ntrails: 5\n")
    result = nas("search", "-c", str(cfg), cwd=tmp_path)
    assert result.returncode == 2
    assert "trails" in result.stderr and str(cfg) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "nas.db").exists()  # nothing was created


def test_a_python_object_in_a_config_file_is_refused(tmp_path):
    cfg = tmp_path / "evil.yaml"
    cfg.write_text("study: !!python/object/apply:os.system ['touch pwned']\n")
    result = nas("search", "-c", str(cfg), cwd=tmp_path)
    assert result.returncode == 2 and "not valid YAML" in result.stderr
    assert not (tmp_path / "pwned").exists()


def test_enqueue_of_an_architecture_outside_the_space_is_a_clear_error(tmp_path):
    result = nas("search", "--space", "resnet", "--enqueue", "resnet50", cwd=tmp_path)
    assert result.returncode == 2
    assert "resnet50" in result.stderr and "not in the space" in result.stderr


def test_spaces_and_show_print_the_presets_and_a_stage_table():
    spaces = nas("spaces")
    assert spaces.returncode == 0
    for name in ("resnet", "resnet-cifar", "resnext", "skip-ablation"):
        assert name in spaces.stdout
    shown = nas("show", "resnet50")
    assert shown.returncode == 0
    assert "25,557,032" in shown.stdout
    missing = nas("show", "resnet51")
    assert missing.returncode == 2 and "resnet50" in missing.stderr


def test_show_prints_the_new_families_at_their_own_input_size():
    for name, needle in (("densenet121", "params 7,978,856  MACs 2,834,161,664"),
                         ("vit_b_16", "params 86,567,656  MACs 17,563,828,224"),
                         ("hybrid_digits", "1x8x8 input")):
        shown = nas("show", name)
        assert shown.returncode == 0, shown.stderr
        assert needle in shown.stdout, name
    assert "transformer(h4,x2)" in nas("show", "hybrid_digits").stdout
    spaces = nas("spaces").stdout
    for name in ("densenet", "convnext", "hybrid", "densenet-imagenet", "convnext-imagenet"):
        assert name in spaces


def test_dashboard_serves_on_localhost_only(tmp_path):
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas", "dashboard", "--storage", url, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=2) as r:
                    body = r.read().decode()
                    break
            except OSError:
                time.sleep(0.3)
        assert body is not None and "<html" in body.lower()
        listening = [
            c.laddr for c in __import__("psutil").Process(proc.pid).net_connections()
            if c.status == "LISTEN"
        ]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_hostile_json_files_are_refused_in_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"spec": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for args in (["show", str(deep)], ["search", "--trials", "1", "--enqueue", str(deep)]):
        result = nas(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "nested deeper than 32 levels" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_damaged_sqlite_file_is_named_in_one_line(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'c.db'}"
    optuna.create_study(study_name="s", storage=url).optimize(lambda t: t.suggest_float("x", 0, 1), 3)
    with open(tmp_path / "c.db", "r+b") as f:  # overwrite pages past the header
        f.seek(4096)
        f.write(b"\xff" * 4096 * 8)
    for args in (["best", "s"], ["search", "--study", "s", "--trials", "1"]):
        result = nas(*args, "--storage", url, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "malformed" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
