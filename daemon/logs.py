"""The logs of every role: text lines (the default) or one JSON object per line
(``ENGAGEMENT_LOG_FORMAT=json``: ``time``, ``level``, ``logger``, ``message``, ``request_id`` when the
request sent ``X-Request-Id``, ``exception`` with a traceback), and one line at start naming the role, its
event loop and the configuration in effect, secrets masked."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from daemon.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SECRETS = ("jwt_secret",)  # settings never logged, only whether they are set
URLS = ("redis_url", "database_url", "kafka_bootstrap")  # logged without their password

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

log = logging.getLogger("engagementd")


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        body: dict[str, Any] = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            body["request_id"] = rid
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(body).decode()


def configure(settings: Settings) -> None:
    """The root logger of this process: level ``log_level``, format ``log_format``, to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


def granian_config(settings: Settings) -> dict[str, Any] | None:
    """granian's own log lines in the same format (None: granian's default text)."""
    if settings.log_format != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "daemon.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
        },
        "loggers": {
            "_granian": {"handlers": ["stderr"], "level": settings.log_level.upper(), "propagate": False}
        },
    }


def masked(settings: Settings) -> dict[str, Any]:
    """The settings as they may be logged: secrets as "set" or "", URLs without their password."""
    values = asdict(settings)
    for name in SECRETS:
        values[name] = "set" if values[name] else ""
    for name in URLS:
        values[name] = _without_password(str(values[name]))
    return values


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def log_start(role: str, settings: Settings) -> None:
    """The one line at start: the role, its event loop, the configuration in effect."""
    try:
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    except RuntimeError:
        loop = "none"
    log.info(
        "engagementd %s starting (event loop: %s); settings: %s",
        role,
        loop,
        orjson.dumps(masked(settings)).decode(),
    )
