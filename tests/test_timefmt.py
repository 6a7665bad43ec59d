"""daemon.timefmt: the API's one timestamp format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from service_fixtures import API_TIMESTAMP

from daemon.history import iso
from daemon.timefmt import utc_timestamp


def test_utc_with_microseconds_and_z_even_when_they_are_zero() -> None:
    assert utc_timestamp(datetime(2026, 11, 22, 2, 0, tzinfo=UTC)) == "2026-11-22T02:00:00.000000Z"
    assert utc_timestamp(datetime(2026, 11, 22, 2, 0, 0, 123456, tzinfo=UTC)) == "2026-11-22T02:00:00.123456Z"


def test_another_offset_is_converted_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert utc_timestamp(datetime(2026, 11, 22, 1, 30, tzinfo=plus_two)) == "2026-11-21T23:30:00.000000Z"


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        utc_timestamp(datetime(2026, 11, 22))


def test_history_uses_the_same_format() -> None:
    assert iso(0) == "1970-01-01T00:00:00.000000Z"
    assert API_TIMESTAMP.fullmatch(iso(1_795_000_000_123_456))
