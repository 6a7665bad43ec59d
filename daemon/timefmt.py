"""The one timestamp format of the API's JSON: RFC 3339 in UTC with microseconds and ``Z``,
``2026-11-22T02:00:00.123456Z`` (history, comments, playlists and the content registry alike)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_timestamp(moment: datetime) -> str:
    """``moment`` (timezone-aware; asyncpg gives timestamptz values in UTC) as the API writes it."""
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no defined instant")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
