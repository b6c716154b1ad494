#!/usr/bin/env bash
# Entrypoint of the resnas image: secrets -> environment, then the command.
#
# * PostgreSQL: with POSTGRES_PASSWORD_FILE set (a compose secret) and NAS_STORAGE unset,
#   exports NAS_STORAGE=postgresql://USER:PASSWORD@HOST:PORT/DB (password URL-encoded). Every
#   `--storage` of the `nas` CLI defaults to NAS_STORAGE, so the password is never written in
#   docker-compose.yml, the image, `.env` or a command line.
# * Ray: with RAY_AUTH_MODE=token, checks that the token (RAY_AUTH_TOKEN or the file at
#   RAY_AUTH_TOKEN_PATH) is there; Ray itself reads it.
# * `nas search` with NAS_RAY_ADDRESS set: a Ray driver must run on a Ray node, so this
#   container first joins the cluster as a node without CPUs or GPUs (it trains nothing), and
#   `--ray-address NAS_RAY_ADDRESS` is added unless the command already gives one.
set -euo pipefail

die() { echo "entrypoint: $*" >&2; exit 1; }

if [[ -z "${NAS_STORAGE:-}" && -n "${POSTGRES_PASSWORD_FILE:-}" ]]; then
  [[ -r "$POSTGRES_PASSWORD_FILE" ]] \
    || die "cannot read the PostgreSQL password file $POSTGRES_PASSWORD_FILE (see deploy/secrets/README.md)"
  NAS_STORAGE="$(python - "$POSTGRES_PASSWORD_FILE" <<'PY'
import os, sys
from urllib.parse import quote

password = open(sys.argv[1], encoding="utf-8").read().rstrip("\r\n")
if not password:
    sys.exit(f"entrypoint: {sys.argv[1]} is empty")
env = os.environ
user = quote(env.get("POSTGRES_USER", "postgres"), safe="")
host = env.get("POSTGRES_HOST", "postgres")
port = env.get("POSTGRES_PORT", "5432")
db = quote(env.get("POSTGRES_DB", user), safe="")
print(f"postgresql://{user}:{quote(password, safe='')}@{host}:{port}/{db}")
PY
)" || exit 1
  export NAS_STORAGE
fi

if [[ "${RAY_AUTH_MODE:-}" == "token" && -z "${RAY_AUTH_TOKEN:-}" && -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
  [[ -s "$RAY_AUTH_TOKEN_PATH" ]] \
    || die "RAY_AUTH_MODE=token but the token file $RAY_AUTH_TOKEN_PATH is missing or empty (see deploy/secrets/README.md)"
fi

if [[ $# -ge 2 && "$1" == "nas" && "$2" == "search" && -n "${NAS_RAY_ADDRESS:-}" ]]; then
  has_address=0
  for arg in "$@"; do
    [[ "$arg" == --ray-address || "$arg" == --ray-address=* ]] && has_address=1
  done
  if [[ $has_address == 0 ]]; then
    set -- "$@" --ray-address "$NAS_RAY_ADDRESS"
  fi
  # The address the search will use (the one we added, or the user's).
  address="$NAS_RAY_ADDRESS"
  prev=""
  for arg in "$@"; do
    [[ "$prev" == --ray-address ]] && address="$arg"
    [[ "$arg" == --ray-address=* ]] && address="${arg#--ray-address=}"
    prev="$arg"
  done
  if [[ "$address" != ray://* ]]; then
    ray start --address="$address" --num-cpus=0 --num-gpus=0 --disable-usage-stats >/tmp/ray-node.log 2>&1 \
      || { cat /tmp/ray-node.log >&2; die "could not join the Ray cluster at $address"; }
  fi
fi

exec "$@"
