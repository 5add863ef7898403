# The operator image: `nofx operator` (and `nofx db migrate` for the chart's hook), and
# `nofx console` (the chart's optional console Deployment), whose DAGs Graphviz's `dot` lays out.
# Multi-stage: wheels are built with the toolchain, the runtime has neither pip's cache nor
# compilers, and runs as a non-root user (the restricted Pod Security Standard).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
# Only the operator: the development harness (operator/nofx_dev) stays out of the wheel.
COPY operator/nofx ./operator/nofx
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends graphviz fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels nofx \
 && useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin nofx
USER 65532:65532
EXPOSE 8000 8080 9090
ENTRYPOINT ["nofx"]
CMD ["operator"]
