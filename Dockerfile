# One image for every Python service of the stack: ray-head, ray-worker, dashboard, nas.
# CUDA PyTorch comes from the base image (torchvision too); pip keeps those versions and adds
# resnas with its `export` extra. Runs as an unprivileged user.
#
#   docker compose build                      # or:
#   docker build -t resnas:latest --build-arg BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime .
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG RESNAS_UID=1000
ARG RESNAS_GID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0

# Keep the base image's CUDA builds of torch/torchvision: pip may not swap them for others.
RUN python -c "import importlib.metadata as m; names = {(d.metadata['Name'] or '').lower(): d.version for d in m.distributions()}; print('\n'.join(f'{n}=={names[n]}' for n in ('torch', 'torchvision') if n in names))" \
        > /etc/resnas-constraints.txt \
    && cat /etc/resnas-constraints.txt

WORKDIR /opt/resnas

# Dependencies first (a layer that survives source edits), read from pyproject.toml.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['export']))" \
        > /tmp/requirements.txt \
    && pip install -c /etc/resnas-constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself (filtered by .dockerignore), installed non-editable.
COPY . .
RUN pip install --no-deps -c /etc/resnas-constraints.txt ".[export]" \
    && python -c "import nas.cli, ray, optuna_dashboard, torch; print('resnas ok, torch', torch.__version__, 'ray', ray.__version__)" \
    && chmod 0755 deploy/entrypoint.sh

# Unprivileged user; /data (datasets), /exports (bundles) and /artifacts (trained weights)
# are its volumes (a new named volume takes the owner of the directory it is mounted on).
RUN groupadd --non-unique --gid "${RESNAS_GID}" resnas \
    && useradd --non-unique --uid "${RESNAS_UID}" --gid "${RESNAS_GID}" --create-home --shell /bin/bash resnas \
    && mkdir -p /data /exports /artifacts \
    && chown resnas:resnas /data /exports /artifacts \
    && ln -s /exports /opt/resnas/exports

USER resnas
VOLUME ["/data", "/exports", "/artifacts"]
EXPOSE 6379 8265 8080

ENTRYPOINT ["/opt/resnas/deploy/entrypoint.sh"]
CMD ["nas", "--help"]
