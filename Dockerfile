# syntax=docker/dockerfile:1
#
# Two images from one file:
#
#   docker build --target api    -t trainjobs-api .     # FastAPI service, no torch
#   docker build --target worker -t trainjobs-worker .  # GPU worker, torch + CUDA wheels
#
# The worker talks to the API over HTTP only, so the two images share nothing
# but this base stage. docker-compose.yml wires them together.

# ---------------------------------------------------------------- base ------
FROM python:3.11.13-slim-bookworm AS base

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# A fixed uid/gid, so files in the var/ volume keep one owner across rebuilds.
# The home directory is for torch's and triton's caches; the code in /app
# stays owned by root and read-only to the service.
RUN groupadd --system --gid 10001 trainjobs \
    && useradd --system --uid 10001 --gid trainjobs --create-home \
        --home-dir /home/trainjobs --shell /usr/sbin/nologin trainjobs

WORKDIR /app

# ----------------------------------------------------------- api-build ------
FROM base AS api-build

RUN python -m venv /opt/venv

# Dependencies first, in their own layer: it is rebuilt only when
# pyproject.toml changes. The empty package folders let setuptools build the
# project before its code is copied in.
COPY pyproject.toml ./
RUN mkdir app worker \
    && pip install --no-cache-dir "./[postgres]"

# Editable install: the code stays in /app next to alembic.ini and migrations/,
# where `trainjobs-api --migrate` finds them whether it looks in the working
# directory or next to the package.
COPY app ./app
RUN pip install --no-cache-dir --no-deps --editable .

# ----------------------------------------------------------------- api ------
FROM base AS api

COPY --from=api-build /opt/venv /opt/venv
COPY alembic.ini ./
COPY migrations ./migrations
COPY app ./app

# var/ holds the SQLite database and the artifacts. A named volume mounted
# here starts as a copy of this folder, ownership included.
RUN mkdir -p var/data var/artifacts \
    && chown -R trainjobs:trainjobs var

ENV TRAINJOBS_HOST=0.0.0.0 \
    TRAINJOBS_PORT=8000

USER 10001:10001
VOLUME ["/app/var"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TRAINJOBS_PORT', '8000'), timeout=4)"]

CMD ["trainjobs-api", "--migrate"]

# -------------------------------------------------------- worker-build ------
FROM base AS worker-build

# torch alone first: by far the largest download, and the one that changes
# least. The default PyPI wheels for Linux x86_64 are CUDA builds that carry
# their own CUDA runtime, so a slim Python base is enough; the host only needs
# the NVIDIA driver and the NVIDIA Container Toolkit.
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml ./
RUN mkdir app worker \
    && pip install --no-cache-dir "./[worker]"

# The worker imports the job specs from app.core.
COPY app ./app
COPY worker ./worker
RUN pip install --no-cache-dir --no-deps --editable .

# -------------------------------------------------------------- worker ------
FROM base AS worker

COPY --from=worker-build /opt/venv /opt/venv
COPY app ./app
COPY worker ./worker

# var/data holds the datasets, var/work the checkpoints of the job in hand.
RUN mkdir -p var/data var/work \
    && chown -R trainjobs:trainjobs var

# Ask the NVIDIA runtime for the CUDA driver libraries (compute) and
# nvidia-smi (utility); which GPUs are visible is up to `docker run --gpus`
# or the compose GPU reservation.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TRAINJOBS_DATA_DIR=/app/var/data

USER 10001:10001
VOLUME ["/app/var"]

CMD ["trainjobs-worker", "--work-dir", "/app/var/work"]
