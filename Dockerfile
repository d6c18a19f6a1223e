# syntax=docker/dockerfile:1
# NeuROK image: Ray 2.60 on Python 3.11 with the project installed from its pyproject pins.
# One image serves the Ray head/workers, the RayJob submitter and the MLflow server (k8s/).
#   GPU (default): docker build -t neurok:gpu .
#   CPU:           docker build --build-arg VARIANT=cpu -t neurok:cpu .
# `make image [variant=cpu]` wraps both. Pin the base by digest in your registry mirror for releases.
ARG RAY_VERSION=2.60.0
ARG VARIANT=gpu

# ---- three.js for `neurok serve`'s playground: what scripts/build_three.py vendors (same pins) ----------
FROM node:20-bookworm-slim AS three
ARG THREE_VERSION=0.170.0
ARG THREE_INTEGRITY=sha512-FQK+LEpYc0fBD+J8g6oSEyyNzjp+Q7Ks1C568WWaoMRLW+TkNNWmenWeGgJjV105Gd+p/2ql1ZcjYvNiPZBhuQ==
WORKDIR /three
RUN npm pack "three@${THREE_VERSION}" --json > pack.json \
    && node -e 'const [p] = require("./pack.json"); if (p.integrity !== process.argv[1]) process.exit(1)' \
        "${THREE_INTEGRITY}" \
    && tar -xzf "three-${THREE_VERSION}.tgz" package/build/three.module.min.js package/LICENSE \
    && mv package/build/three.module.min.js . && mv package/LICENSE three.LICENSE

# ---- build: compilers live only here ----------------------------------------------------------
FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT} AS build
ARG VARIANT
USER 0
# Only for a dependency that ships no wheel; unpinned because the Ray base's Ubuntu moves.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o 1000 -g 100 /opt/neurok /src /src/app
USER 1000:100
WORKDIR /src
COPY --chown=1000:100 pyproject.toml *.md ./
COPY --chown=1000:100 platform ./platform
COPY --from=three --chown=1000:100 /three/three.module.min.js /three/three.LICENSE ./platform/neurok/serve/vendor/
# Install into a separate prefix (not the base's conda env) so the final stage copies only what we
# added; packages the base already has at the pinned version (ray itself) are not reinstalled.
# The CPU variant takes torch from the CPU wheel index, else pip pulls a multi-GB CUDA build.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN if [ "${VARIANT}" = "cpu" ]; then export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu; fi \
    && pip install --no-cache-dir --prefix=/opt/neurok "./[deploy]" \
    && python -m compileall -q /opt/neurok
# The configs the CLI reads by relative path (neurok train pipelines/train.yaml ...). Gathered from the
# whole (.dockerignore-filtered) context so a config folder git does not have yet cannot break the build.
WORKDIR /src/app
COPY --chown=1000:100 . .
RUN mkdir -p pipelines tune datasets && rm -rf platform pyproject.toml ./*.md

# ---- runtime: the Ray base plus our prefix, nothing else -------------------------------------
FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT}
ARG RAY_VERSION
ARG VARIANT
LABEL org.opencontainers.image.title="neurok" \
      org.opencontainers.image.description="NeuROK training, tuning, data generation and MLflow server" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.neurok.ray-version="${RAY_VERSION}" \
      io.neurok.variant="${VARIANT}"
# PYTHONPATH (not a user site) so every process sees the project whatever uid the pod runs as,
# Ray workers included: they inherit the container environment from the raylet.
ENV PYTHONPATH=/opt/neurok/lib/python3.11/site-packages \
    PATH=/opt/neurok/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
COPY --from=build --chown=0:0 /opt/neurok /opt/neurok
# root-owned: the runtime user cannot change code or configs (pods also mount the root read-only)
COPY --from=build --chown=0:0 /src/app /app
WORKDIR /app
# The base's `ray` user, by number so Kubernetes can check runAsNonRoot.
USER 1000:100
CMD ["neurok", "--help"]
