# Adds a Docker HEALTHCHECK that passes (the worker's own health endpoint) to a
# worker image built from ./Dockerfile (BASE).
ARG BASE
FROM ${BASE}
HEALTHCHECK --interval=1s --timeout=1s --retries=1 \
    CMD wget -q -O- "http://127.0.0.1:${PORT}/cgi-bin/health" || exit 1
