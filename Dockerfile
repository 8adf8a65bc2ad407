# The CARTL service image. One image runs every role; docker-compose.yml picks the command per
# service (migrations, API, worker). The default command is the API.
FROM python:3.11-slim

# An extra package index for torch and torchvision. Empty (the default) takes PyPI's wheels: CUDA
# builds of several GB, which also run on the CPU. For a CPU-only image, well under 1 GB of torch:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# It is an extra index, not a replacement, because the rest of the dependencies live on PyPI only;
# pip takes that index's `+cpu` builds since they sort above PyPI's build of the same version.
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CARTL_DATA_DIR=/data

RUN python -m venv /opt/venv

# The service user owns only the data: /data/artifacts is where compose mounts the artifact volume,
# and a new named volume takes its owner and mode (0700: the user's alone) from the image's folder.
RUN groupadd --system --gid 10001 cartl \
    && useradd --system --no-log-init --create-home --uid 10001 --gid cartl cartl \
    && mkdir -p /data/artifacts \
    && chown -R cartl:cartl /data \
    && chmod -R 0700 /data

WORKDIR /app

# The dependency layer: built from pyproject.toml alone, with empty stand-ins for the packages and
# the readme that the project metadata names, so that a change to the source does not reinstall
# torch. It is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN mkdir cartl_core app worker \
    && touch README.md cartl_core/__init__.py app/__init__.py worker/__init__.py \
    && pip install --no-cache-dir ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -e . \
    && rm -rf README.md cartl_core app worker cartl.egg-info

# The source tree itself, installed editable, so the installed package is this tree (alembic.ini
# and migrations/ included); owned by root and read-only to the service user.
COPY . .
RUN pip install --no-cache-dir --no-deps -e .

# The commit every job's provenance names (the image is not a git checkout):
#   --build-arg CARTL_COMMIT=$(git rev-parse HEAD)
ARG CARTL_COMMIT=""
ENV CARTL_COMMIT=$CARTL_COMMIT

# By number, so that a runtime that checks for non-root (Kubernetes runAsNonRoot) can tell.
USER 10001:10001

EXPOSE 8000
# No HEALTHCHECK here: the worker and the migration run from this image too and serve no HTTP.
# docker-compose.yml checks the API's /healthz.
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--http", "app.api.protocol:HTTPProtocol", "--loop", "asyncio"]
