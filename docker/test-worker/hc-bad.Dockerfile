# Adds a Docker HEALTHCHECK that always fails to a worker image built from
# ./Dockerfile (BASE). The HTTP health endpoint itself still answers 200.
ARG BASE
FROM ${BASE}
HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD false
