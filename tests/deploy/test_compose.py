"""Static checks of the multi-machine stack (no Docker engine needed).

The compose file must be valid against the Compose Specification's own JSON schema (vendored
in compose-spec.json, see README.md here), every container must run something real (a `nas`
subcommand with options it accepts, `ray start` with options Ray knows, PostgreSQL), and the
security rules hold: secrets from files, no trust auth, nothing published beyond 127.0.0.1,
Ray token authentication on, no password or token in the tracked files.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
DOCS = ROOT / "docs" / "cluster.md"
SCHEMA = Path(__file__).with_name("compose-spec.json")
IMAGE_ROOT = "/opt/resnas/"  # where the Dockerfile puts the project (WORKDIR)
RAY_SERVICES = ("ray-head", "ray-worker", "nas")


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and "services" in data
    return data


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _argv(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def _nas_group():
    import typer.main

    from nas.cli import app

    return typer.main.get_command(app)


def _is_group(cmd) -> bool:
    # duck-typed: typer may ship its own copy of click (typer._click), so no isinstance
    return isinstance(getattr(cmd, "commands", None), dict)


def _check_nas_args(args: list[str]) -> None:
    """Parse `nas ARGS` with the real CLI (without running it): unknown commands/options fail."""
    args = list(args)
    cmd = _nas_group()
    assert args, "no nas subcommand"
    path = ["nas"]
    while _is_group(cmd):
        if not args or args[0] in ("--help", "-h"):
            return
        name = args.pop(0)
        assert name in cmd.commands, (
            f"`{' '.join(path)} {name}`: not a command; have {sorted(cmd.commands)}"
        )
        cmd = cmd.commands[name]
        path.append(name)
    try:
        cmd.make_context(" ".join(path), list(args), resilient_parsing=False)
    except Exception as exc:  # click's (or typer's vendored click's) exceptions
        kinds = {c.__name__ for c in type(exc).__mro__}
        if "Exit" in kinds:  # --help
            return
        if "UsageError" in kinds:
            pytest.fail(f"`{' '.join(path + args)}`: {exc.format_message()}")
        raise


def _check_ray_start(args: list[str]) -> None:
    """`ray start ARGS`: every option must be one Ray's own `ray start` declares."""
    from ray.scripts.scripts import start

    known = {opt for p in start.params for opt in (*p.opts, *p.secondary_opts)}
    for arg in args:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            assert name in known, f"`ray start {name}` is not an option of ray {start.name}"


# -- the file is a valid Compose file -------------------------------------------------------------
def test_compose_file_validates_against_the_compose_spec_schema(compose):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors
    )


def test_the_schema_rejects_a_broken_file():
    """The vendored schema really checks something (a typo'd key must fail)."""
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    assert not validator.is_valid({"services": {"x": {"image": "a", "portz": ["1:1"]}}})
    assert validator.is_valid({"services": {"x": {"image": "a", "ports": ["127.0.0.1:1:1"]}}})


def test_every_variable_is_documented_in_env_example():
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    assert used, "expected ${VARIABLES} in the compose file"
    assert not used - documented, f"undocumented in .env.example: {sorted(used - documented)}"
    assert not documented - used, f".env.example documents unused: {sorted(documented - used)}"


def test_the_expected_services_exist(services):
    assert set(services) >= {"postgres", "ray-head", "ray-worker", "dashboard", "nas"}


# -- every container runs something real ----------------------------------------------------------
def test_every_service_runs_a_real_command(services):
    dockerfile = DOCKERFILE.read_text()
    image_entry = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])", dockerfile, re.M).group(1))
    image_cmd = json.loads(re.search(r"^CMD\s+(\[.*\])", dockerfile, re.M).group(1))
    for name, svc in services.items():
        if name == "postgres":
            assert re.search(r"(^|[-:/])postgres:\d", str(svc["image"])), svc["image"]
            assert "command" not in svc and "entrypoint" not in svc
            continue
        assert "build" in svc or "image" in svc, name
        entry = _argv(svc["entrypoint"]) if "entrypoint" in svc else image_entry
        argv = entry + (_argv(svc["command"]) if "command" in svc else image_cmd)
        # our entrypoint script runs its arguments (after reading the secrets)
        assert argv[0] == IMAGE_ROOT + "deploy/entrypoint.sh", (name, argv)
        assert (ROOT / argv[0].removeprefix(IMAGE_ROOT)).is_file()
        argv = argv[1:]
        if argv[:2] == ["ray", "start"]:
            _check_ray_start(argv[2:])
        elif argv[:1] == ["nas"]:
            _check_nas_args(argv[1:])
        else:
            pytest.fail(f"service {name} runs {argv}: neither `nas ...` nor `ray start ...`")


def test_ray_head_and_workers(services):
    head = _argv(services["ray-head"]["command"])
    assert head[:2] == ["ray", "start"] and "--head" in head and "--block" in head
    assert "--port=6379" in head
    worker = _argv(services["ray-worker"]["command"])
    assert worker[:2] == ["ray", "start"] and "--block" in worker
    assert "--address=ray-head:6379" in worker
    assert "--head" not in worker
    assert "container_name" not in services["ray-worker"], "a fixed name prevents --scale"
    for name in ("ray-worker", "nas"):
        assert "ray-head" in services[name].get("depends_on", {}), name


def test_the_dashboard_serves_the_postgres_storage(services):
    dash = services["dashboard"]
    argv = _argv(dash["command"])
    assert argv[:2] == ["nas", "dashboard"]
    assert "--storage" not in argv, "the storage URL (with its password) must come from NAS_STORAGE"
    assert dash["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert _env(dash)["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")


def test_the_documented_nas_commands_parse(services):
    """`docker compose run --rm nas ...` lines of docs/cluster.md are real CLI calls."""
    nas = services["nas"]
    entry = _argv(nas["entrypoint"])
    assert entry[-1] == "nas"
    _check_nas_args(["search", "-c", "examples/cifar10.yaml", "--ray-address", "ray-head:6379"])
    text = DOCS.read_text()
    lines = [ln.strip() for ln in text.splitlines() if "docker compose run --rm nas " in ln]
    assert lines, "docs/cluster.md shows no `docker compose run --rm nas ...` command"
    for line in lines:
        args = shlex.split(line.split("docker compose run --rm nas ", 1)[1].split(" #")[0])
        _check_nas_args(args)
    for line in re.findall(r"^\s*(?:\$ )?nas (search .*)$", text, re.M):
        _check_nas_args(shlex.split(line.split(" #")[0].replace("\\", "")))


def test_nas_has_data_and_exports_volumes(services):
    targets = {str(v).split(":")[1] for v in services["nas"]["volumes"]}
    assert {"/data", "/exports"} <= targets
    assert "/data" in {str(v).split(":")[1] for v in services["ray-worker"]["volumes"]}


# -- security rules -----------------------------------------------------------------------------
def test_postgres_uses_a_secret_file_and_no_trust_auth(compose, services):
    pg = services["postgres"]
    env = _env(pg)
    assert "POSTGRES_PASSWORD" not in env
    assert env["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")
    secret = env["POSTGRES_PASSWORD_FILE"].removeprefix("/run/secrets/")
    assert secret in pg["secrets"]
    assert compose["secrets"][secret]["file"].startswith("./deploy/secrets/")
    assert env.get("POSTGRES_HOST_AUTH_METHOD", "scram-sha-256") != "trust"
    assert "--auth-host=scram-sha-256" in env["POSTGRES_INITDB_ARGS"]
    assert "trust" not in env["POSTGRES_INITDB_ARGS"]
    assert "ports" not in pg, "PostgreSQL must not be published to the host"
    assert "pg_isready" in " ".join(_argv(pg["healthcheck"]["test"]))
    volume = str(pg["volumes"][0]).split(":")[0]
    assert volume in compose["volumes"], "PostgreSQL data belongs in a named volume"


def test_every_published_port_is_bound_to_loopback(services):
    published = 0
    for name, svc in services.items():
        assert svc.get("network_mode") != "host", f"{name} uses the host network"
        for port in svc.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (
                    f"{name} publishes {port!r} beyond 127.0.0.1"
                )
                assert str(port).count(":") >= 2, (name, port)
    assert published >= 2  # the Ray dashboard and optuna-dashboard
    assert any(str(p).endswith(":8265") for p in services["ray-head"]["ports"])
    assert any(str(p).endswith(":8080") for p in services["dashboard"]["ports"])


def test_ray_token_authentication_is_on_everywhere(compose, services):
    for name in RAY_SERVICES:
        env = _env(services[name])
        assert env.get("RAY_AUTH_MODE") == "token", name
        assert "RAY_AUTH_TOKEN" not in env, f"{name}: the token itself must not be in the file"
        path = env["RAY_AUTH_TOKEN_PATH"]
        assert path.startswith("/run/secrets/"), name
        secret = path.removeprefix("/run/secrets/")
        assert secret in services[name]["secrets"], name
        assert compose["secrets"][secret]["file"].startswith("./deploy/secrets/")


def test_workers_reserve_nvidia_gpus(services):
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


PLAINTEXT = [
    re.compile(
        r"(?i)(password|passwd|secret|token)[A-Z_]*\s*[:=]\s*(?!/run/secrets/)[\"']?[^\s\"'$/{]{4,}"
    ),
    re.compile(r"postgres(?:ql)?(?:\+\w+)?://[^:/@\s]+:[^@\s$]+@"),  # user:password@ in a URL
    re.compile(r"\b[0-9a-f]{32,}\b"),  # a generated token
]


@pytest.mark.parametrize("path", [COMPOSE, DOCKERFILE, ENV_EXAMPLE], ids=lambda p: p.name)
def test_no_plaintext_secret(path):
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0] if path.suffix != ".md" else line
        for pattern in PLAINTEXT:
            hit = pattern.search(code)
            allowed = hit and (
                hit.group(0).upper().startswith(("POSTGRES_PASSWORD_FILE", "RAY_AUTH_TOKEN_PATH"))
                or "secrets" in hit.group(0)
            )
            assert not hit or allowed, (
                f"{path.name}:{lineno}: looks like a plaintext secret: {line.strip()}"
            )


def test_secret_files_stay_out_of_git_and_the_image(compose):
    ignore = (ROOT / "deploy" / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignore and "!README.md" in ignore
    assert "deploy/secrets" in (ROOT / ".dockerignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        for secret in compose["secrets"].values():
            rel = secret["file"].removeprefix("./")
            ignored = subprocess.run([git, "check-ignore", "-q", rel], cwd=ROOT).returncode == 0
            assert ignored, f"{rel} is not git-ignored"


def test_dockerfile_builds_a_non_root_cuda_image():
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    assert base.startswith("pytorch/pytorch:") and "cuda" in base and "runtime" in base
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert re.search(r"pip install .*\"?\.\[export\]\"?", text)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert text.index("USER " + users[-1]) < text.index("ENTRYPOINT")
    assert ENTRYPOINT.is_file() and ENTRYPOINT.stat().st_mode & 0o111


def test_the_documented_search_config_is_valid_for_the_stack():
    """examples/cifar10.yaml (what the docs run in the `nas` container) is a valid SearchConfig
    whose data lives in the stack's /data volume."""
    from nas.config import build_config, load_config_file

    path = ROOT / "examples" / "cifar10.yaml"
    if not path.is_file():
        pytest.skip("examples/cifar10.yaml is not there")
    config = build_config(load_config_file(path), {}, str(path))
    assert config.train.get("data_dir") == "/data"
    assert config.ray_address is None, "the stack's entrypoint supplies --ray-address"
