# engagementd: one image for every role (migrate, api, flusher). The role is the command:
#   docker run IMAGE api --host 0.0.0.0 --port 8080
#   docker run IMAGE flusher --metrics-port 9101
# Every setting comes from ENGAGEMENT_* environment variables (see docs/configuration.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what `pip install .` needs (pyproject.toml names README.md as the readme); the source tree is
# removed after the install, so the image runs the installed package and nothing else.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY api ./api
COPY consumer ./consumer
COPY flusher ./flusher
COPY lua ./lua
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent engagement

WORKDIR /app
USER engagement

# 8080: the api (HTTP API and its /metrics). 9101: the flusher's /metrics (when --metrics-port 9101).
EXPOSE 8080 9101

ENTRYPOINT ["engagementd"]
CMD ["api", "--host", "0.0.0.0", "--port", "8080"]
