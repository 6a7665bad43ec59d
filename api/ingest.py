"""Request bodies of the view endpoints: reading with a size limit, decoding, validating.

The bulk path validates a whole batch with C-level operations (set unions, ``map``, one regular
expression over the joined ids) and only walks items one by one in Python when that fast check fails,
to name the first bad item's index. A batch is all or nothing: any bad item rejects all of it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import contains, itemgetter
from typing import Any

import msgpack
import orjson
from starlette.requests import ClientDisconnect, Request

from api.errors import ApiError, ClientClosed
from daemon.ids import (
    EVENT_TYPES,
    MEDIA_STARTED,
    SESSION_ID_MAX_LEN,
    Playback,
    id_pattern,
    lines_pattern,
)
from daemon.keys import PLAYBACK_COUNTERS
from daemon.settings import Settings

log = logging.getLogger(__name__)

ITEM_FIELDS = frozenset({"content_id", "user_id", "watch_seconds", "event_type", "session_id"})
SINGLE_FIELDS = frozenset({"watch_seconds", "event_type", "session_id"})
_EVENT_TYPES_OR_NULL = frozenset({*EVENT_TYPES, None})
_SECONDS_TYPES = {int, type(None)}
_get_content_id = itemgetter("content_id")
_JSON_WHITESPACE = b" \t\r\n"


@dataclass(slots=True)
class SingleView:
    watch_seconds: int = 0
    event_type: str = MEDIA_STARTED
    session_id: str = ""
    given_seconds: int | None = None  # watch_seconds as sent (None when absent)


NO_BODY = SingleView()


@dataclass(slots=True)
class Batch:
    ids: list[str]  # one content id per view (media_started) event
    watch_ids: list[str]  # the events with watch seconds: their ids ...
    watch_seconds: list[int]  # ... and seconds (> 0)
    # playback signals: counter (completions, skips, replays) -> one content id per event
    signals: dict[str, list[str]] = field(default_factory=dict)
    items: int = -1  # events in the batch (views + signals); -1: len(ids)
    # the views (not signals) that carry a user_id: content ids and user ids, parallel (unique viewers)
    viewer_ids: list[str] = field(default_factory=list)
    viewer_users: list[str] = field(default_factory=list)
    playback: list[Playback] = field(default_factory=list)  # items with a user_id, when asked for

    @property
    def events(self) -> int:
        return len(self.ids) if self.items < 0 else self.items


def integral(value: Any) -> Any:
    """An integral number as an int: JSON Schema's ``integer`` admits ``37.0``, and so do we. Anything
    else is returned as it is, for the caller's check to refuse."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def media_type(content_type: str) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return content_type.split(";", 1)[0].strip().lower()


class _Slow(Exception):
    """The fast check failed; find the precise error item by item."""


class BodyReader:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.id_re = id_pattern(settings.content_id_max_len)
        self.session_re = id_pattern(SESSION_ID_MAX_LEN)
        self._sessions_re = lines_pattern(SESSION_ID_MAX_LEN)
        self._ids_re = lines_pattern(settings.content_id_max_len)

    # -- reading --------------------------------------------------------------------------------

    async def read(self, request: Request, limit: int) -> bytes:
        """The body, at most ``limit`` bytes (413 past it). A client that closes the connection before
        sending it all gets ``ClientClosed`` (499 in the metrics, one log line, never a 500)."""
        try:
            return await self._read(request, limit)
        except ClientDisconnect:
            log.info(
                "client closed the connection before sending its body: %s %s",
                request.method,
                request.url.path,
            )
            raise ClientClosed() from None

    async def read_json(self, request: Request, limit: int) -> bytes:
        """``read``, for an endpoint whose body is JSON: a body sent as another media type (curl's form
        type, say) is 415, as on the batch endpoint. No Content-Type means JSON."""
        body = await self.read(request, limit)
        if body and media_type(request.headers.get("content-type", "")) not in ("application/json", ""):
            raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
        return body

    async def _read(self, request: Request, limit: int) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise ApiError(400, "bad_request", "Content-Length is not a number.") from None
            if declared > limit:
                raise _too_large(limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    # -- single view ----------------------------------------------------------------------------

    def single(self, body: bytes) -> int:
        """The optional JSON body of a single view; returns watch_seconds (0 when absent)."""
        return self.single_view(body).watch_seconds

    def single_view(self, body: bytes) -> SingleView:
        """The optional JSON body of a single view: watch_seconds, event_type, session_id."""
        if not body.strip(_JSON_WHITESPACE):  # (bytes.strip() would also drop \x0b and \x0c, not JSON)
            return NO_BODY
        doc = json_object(body, SINGLE_FIELDS)
        given = doc.get("watch_seconds")
        view = SingleView(self._watch_seconds(given, "watch_seconds"), given_seconds=given)
        if len(doc) > 1 or given is None:
            event_type = doc.get("event_type")
            if event_type is not None:
                view.event_type = self._event_type(event_type, "event_type")
            session_id = doc.get("session_id")
            if session_id is not None:
                view.session_id = self._session_id(session_id, "session_id")
        return view

    def _event_type(self, value: Any, where: str, index: int | None = None) -> str:
        if type(value) is not str or value not in EVENT_TYPES:
            message = f"{where} must be one of {', '.join(sorted(EVENT_TYPES))}."
            if index is None:
                raise ApiError(422, "invalid_event_type", message)
            raise _invalid(index, "invalid_event_type", message)
        return value

    def _session_id(self, value: Any, where: str, index: int | None = None) -> str:
        if not isinstance(value, str) or not self.session_re.fullmatch(value):
            message = f"{where} must be 1 to {SESSION_ID_MAX_LEN} characters of A-Z a-z 0-9 _ . : -"
            if index is None:
                raise ApiError(422, "invalid_session_id", message)
            raise _invalid(index, "invalid_session_id", message)
        return value

    def content_id(self, content_id: str) -> str:
        if not self.id_re.fullmatch(content_id):
            raise ApiError(
                422,
                "invalid_content_id",
                f"contentId must be 1 to {self.settings.content_id_max_len} characters"
                " of A-Z a-z 0-9 _ . : -",
            )
        return content_id

    def _watch_seconds(self, value: Any, where: str) -> int:
        if value is None:
            return 0
        value = integral(value)
        if type(value) is not int or not 0 <= value <= self.settings.watch_seconds_max:
            raise ApiError(
                422,
                "invalid_watch_seconds",
                f"{where} must be an integer from 0 to {self.settings.watch_seconds_max}.",
            )
        return value

    # -- batch ----------------------------------------------------------------------------------

    def decode_batch(self, body: bytes, content_type: str) -> Any:
        media = media_type(content_type)
        if media == "application/msgpack" or media == "application/x-msgpack":
            try:
                return msgpack.unpackb(body, raw=False, strict_map_key=True)
            except Exception:  # msgpack raises many types for garbage: all mean the same here
                raise ApiError(400, "malformed_body", "The body is not valid msgpack.") from None
        if media == "application/json" or media == "":
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError:
                raise ApiError(400, "malformed_body", "The body is not valid JSON.") from None
        raise ApiError(415, "unsupported_media_type", "Send application/json or application/msgpack.")

    def batch(self, items: Any, playback: bool = False) -> Batch:
        """Validate a batch: an array of view items, or an object of columns (``columns``). With
        ``playback``, also list the items that carry a user_id as events."""
        if type(items) is dict:
            return self.columns(items, playback)
        if type(items) is not list:
            raise ApiError(
                422, "invalid_body", "The body must be an array of view items, or an object of columns."
            )
        n = len(items)
        self._check_size(n)
        if n == 0:
            return Batch([], [], [])
        try:
            return self._fast(items, n, playback)
        except (_Slow, KeyError, TypeError, ValueError):
            self._slow(items)
            raise  # unreachable: _slow raises for the item the fast check tripped on

    def _check_size(self, n: int) -> None:
        if n > self.settings.batch_max_items:
            raise ApiError(
                413, "too_many_items", f"A batch holds at most {self.settings.batch_max_items} items."
            )

    def columns(self, doc: dict[Any, Any], playback: bool = False) -> Batch:
        """A columnar batch, ``{"content_id": [...], "user_id": [...], ...}``: one array per field of
        the view items, all as long as ``content_id``; a null entry is an absent field. The same
        events, limits and checks as the array of items: the common shapes (content ids, with user
        ids and watch seconds) are checked column by column in C, without an object per event; any
        other shape, or a column that fails the fast check, is turned into items and checked as
        items, so that the error names the first bad item's index."""
        unknown = doc.keys() - ITEM_FIELDS
        if unknown:
            raise ApiError(422, "unknown_field", f"Unknown column '{sorted(map(str, unknown))[0]}'.")
        ids = doc.get("content_id")
        if type(ids) is not list:
            raise ApiError(422, "invalid_body", "A columnar batch needs a content_id array.")
        n = len(ids)
        self._check_size(n)
        for name, column in doc.items():
            if type(column) is not list or len(column) != n:
                raise ApiError(
                    422, "invalid_body", f"Column {name} must be an array of {n} values, as content_id."
                )
        if n == 0:
            return Batch([], [], [])
        try:
            return self._fast_columns(doc, ids, n, playback)
        except _Slow:
            pass
        names = list(doc)
        rows = [
            {name: value for name, value in zip(names, values, strict=True) if value is not None}
            for values in zip(*doc.values(), strict=True)
        ]
        return self.batch(rows, playback)

    def _fast_columns(self, doc: dict[str, list[Any]], ids: list[Any], n: int, playback: bool) -> Batch:
        if "event_type" in doc or "session_id" in doc:
            raise _Slow  # playback signals: the items' path
        if set(map(type, ids)) != {str} or not _all_match(self._ids_re, ids):
            raise _Slow
        users = doc.get("user_id")
        given_users: list[str] = []
        if users is not None:
            given_users = list(filter(None, users))
            if len(given_users) != n - users.count(None):  # "" or 0 given: invalid
                raise _Slow
            if given_users and (
                set(map(type, given_users)) != {str} or not _all_match(self._ids_re, given_users)
            ):
                raise _Slow
        seconds = doc.get("watch_seconds")
        watch_ids, given = self._given_seconds(ids, seconds) if seconds is not None else ([], [])
        batch = Batch(ids, watch_ids, given)
        if given_users:
            if len(given_users) == n:
                batch.viewer_ids, batch.viewer_users = ids, given_users
            else:
                batch.viewer_ids, batch.viewer_users = list(compress(ids, users)), given_users  # type: ignore[arg-type]
            if playback:
                given_seconds = seconds if seconds is not None else repeat(None)
                batch.playback = [
                    (user, content_id, MEDIA_STARTED, s, "")
                    for user, content_id, s in zip(users, ids, given_seconds, strict=False)  # type: ignore[arg-type]
                    if user is not None
                ]
        return batch

    def _fast(self, items: list[Any], n: int, playback: bool) -> Batch:
        # itemgetter raises TypeError for anything but a mapping (msgpack and JSON give no others)
        # and KeyError for an item without content_id.
        ids = list(map(_get_content_id, items))
        if not _all_match(self._ids_re, ids):
            raise _Slow
        keys = sum(map(len, items))
        if keys == n:  # content_id only: the common case
            return Batch(ids, [], [])
        # (map over dict.get / contains with repeat() runs in C; methodcaller is 4x slower)
        with_user = sum(map(contains, items, repeat("user_id", n)))
        with_seconds = sum(map(contains, items, repeat("watch_seconds", n)))
        types, sessions = self._types_and_sessions(items, n, keys - n - with_user - with_seconds)
        users, given_users = self._users(items, n, with_user)
        watch_ids, given = self._seconds(items, n, ids, with_seconds)
        batch = Batch(ids, watch_ids, given)
        if with_user and not types:  # (every view with a user: the ids themselves, see ViewBuffer.add_many)
            batch.viewer_ids = ids if with_user == n else list(compress(ids, users))
            batch.viewer_users = given_users
        if types:
            batch.items = n
            batch.ids, batch.signals = _split_signals(ids, types)
            if with_user:
                batch.viewer_ids, batch.viewer_users = _viewers(ids, users, types)
        if playback and with_user:
            batch.playback = _playback(items, n, ids, types, sessions)
        return batch

    def _types_and_sessions(self, items: list[Any], n: int, extra: int) -> tuple[list[Any], list[Any]]:
        """Each item's event_type and session_id (None where absent; [] when no item has one), when
        ``extra`` fields besides content_id, user_id and watch_seconds are exactly those."""
        types: list[Any] = []
        sessions: list[Any] = []
        if not extra:
            return types, sessions
        with_type = sum(map(contains, items, repeat("event_type", n)))
        with_session = sum(map(contains, items, repeat("session_id", n)))
        if extra != with_type + with_session:  # some item has an unknown field
            raise _Slow
        if with_type:
            types = list(map(dict.get, items, repeat("event_type", n)))
            if not set(types) <= _EVENT_TYPES_OR_NULL:  # (an unhashable value: TypeError)
                raise _Slow
        if with_session:
            sessions = list(map(dict.get, items, repeat("session_id", n)))
            given_sessions = [s for s in sessions if s is not None]
            if set(map(type, given_sessions)) - {str}:
                raise _Slow
            if given_sessions and not _all_match(self._sessions_re, given_sessions):
                raise _Slow
        return types, sessions

    def _users(self, items: list[Any], n: int, with_user: int) -> tuple[list[Any], list[str]]:
        """Each item's user_id (None where absent), and the given ones; ([], []) when none is."""
        if not with_user:
            return [], []
        users = list(map(dict.get, items, repeat("user_id", n)))
        given_users = list(filter(None, users))  # a falsy user_id ("", null, 0) is invalid: _Slow
        if len(given_users) != with_user or set(map(type, given_users)) != {str}:
            raise _Slow
        if not _all_match(self._ids_re, given_users):
            raise _Slow
        return users, given_users

    def _seconds(
        self, items: list[Any], n: int, ids: list[str], with_seconds: int
    ) -> tuple[list[str], list[int]]:
        """The ids and watch seconds of the items that give some (an absent or 0 value gives none)."""
        if not with_seconds:
            return [], []
        seconds = list(map(dict.get, items, repeat("watch_seconds", n), repeat(0, n)))  # absent: 0
        return self._given_seconds(ids, seconds)

    def _given_seconds(self, ids: list[str], seconds: list[Any]) -> tuple[list[str], list[int]]:
        """The ids and watch seconds of the events whose value (one per id; None or 0: none) gives
        some; _Slow when a value is not an integer in range."""
        kinds = set(map(type, seconds))
        if float in kinds:  # 37.0 is an integer
            seconds = list(map(integral, seconds))
            kinds = set(map(type, seconds))
        if not kinds <= _SECONDS_TYPES:
            raise _Slow
        given = list(filter(None, seconds))
        if given and (min(given) < 0 or max(given) > self.settings.watch_seconds_max):
            raise _Slow
        return list(compress(ids, seconds)), given

    def _slow(self, items: list[Any]) -> None:
        for index, item in enumerate(items):
            where = f"item {index}"
            if not isinstance(item, dict):
                raise _invalid(index, "invalid_item", f"{where} must be an object.")
            unknown = item.keys() - ITEM_FIELDS
            if unknown:
                raise _invalid(
                    index, "unknown_field", f"{where} has unknown field '{sorted(map(str, unknown))[0]}'."
                )
            content_id = item.get("content_id")
            if not isinstance(content_id, str) or not self.id_re.fullmatch(content_id):
                raise _invalid(index, "invalid_content_id", f"{where}: content_id must be a valid id string.")
            if "user_id" in item:
                user_id = item["user_id"]
                if not isinstance(user_id, str) or not self.id_re.fullmatch(user_id):
                    raise _invalid(index, "invalid_user_id", f"{where}: user_id must be a valid id string.")
            if item.get("event_type") is not None:
                self._event_type(item["event_type"], f"{where}: event_type", index)
            if item.get("session_id") is not None:
                self._session_id(item["session_id"], f"{where}: session_id", index)
            seconds = integral(item.get("watch_seconds"))
            if seconds is not None and (
                type(seconds) is not int or not 0 <= seconds <= self.settings.watch_seconds_max
            ):
                raise _invalid(
                    index,
                    "invalid_watch_seconds",
                    f"{where}: watch_seconds must be an integer from 0 to {self.settings.watch_seconds_max}.",
                )
        raise ApiError(422, "invalid_body", "The batch could not be validated.")


def _all_match(pattern: re.Pattern[str], values: list[str]) -> bool:
    """Whether every value is one match of ``pattern`` (one fullmatch over the values joined by
    newlines, which no valid value contains)."""
    joined = "\n".join(values)
    return joined.count("\n") == len(values) - 1 and pattern.fullmatch(joined) is not None


def _split_signals(ids: list[str], types: list[str | None]) -> tuple[list[str], dict[str, list[str]]]:
    """Views (media_started or no event_type) apart from playback signals, per counter."""
    views: list[str] = []
    signals: dict[str, list[str]] = {}
    for content_id, event_type in zip(ids, types, strict=True):
        if event_type is None or event_type == MEDIA_STARTED:
            views.append(content_id)
        else:
            counter = PLAYBACK_COUNTERS[event_type]
            found = signals.get(counter)
            if found is None:
                signals[counter] = [content_id]
            else:
                found.append(content_id)
    return views, signals


def _viewers(ids: list[str], users: list[Any], types: list[Any]) -> tuple[list[str], list[str]]:
    """The views (media_started or no event_type) that carry a user_id: content ids, user ids."""
    viewer_ids: list[str] = []
    viewer_users: list[str] = []
    for content_id, user_id, event_type in zip(ids, users, types, strict=True):
        if user_id is not None and (event_type is None or event_type == MEDIA_STARTED):
            viewer_ids.append(content_id)
            viewer_users.append(user_id)
    return viewer_ids, viewer_users


def _playback(
    items: list[dict[str, Any]], n: int, ids: list[str], types: list[Any], sessions: list[Any]
) -> list[Playback]:
    """The events of the items that carry a user_id (anonymous items publish nothing)."""
    has_user = list(map(contains, items, repeat("user_id", n)))
    users = list(map(dict.get, items, repeat("user_id", n)))
    seconds = list(map(dict.get, items, repeat("watch_seconds", n)))
    return [
        (user, content_id, event_type or MEDIA_STARTED, given, session or "")
        for user, content_id, event_type, given, session in compress(
            zip(users, ids, types or repeat(None), seconds, sessions or repeat(None), strict=False), has_user
        )
    ]


def json_object(body: bytes, fields: frozenset[str]) -> dict[str, Any]:
    """A JSON object body with no field outside ``fields``: 400 malformed_body, 422 invalid_body or
    422 unknown_field otherwise. The one parser of the service's small JSON request bodies."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "malformed_body", "The body is not valid JSON.") from None
    if not isinstance(doc, dict):
        raise ApiError(422, "invalid_body", "The body must be a JSON object.")
    unknown = doc.keys() - fields
    if unknown:
        raise ApiError(422, "unknown_field", f"Unknown field '{sorted(unknown)[0]}'.")
    return doc


def _invalid(index: int, code: str, message: str) -> ApiError:
    return ApiError(422, code, message, index=index)


def _too_large(limit: int) -> ApiError:
    # The rest of the body is never read: the connection cannot be reused for another request.
    return ApiError(413, "body_too_large", f"The body exceeds {limit} bytes.", {"Connection": "close"})
