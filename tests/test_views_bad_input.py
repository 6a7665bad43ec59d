"""Every bad input to the view endpoints gets its documented 4xx and a stable JSON ``error`` code, and
nothing of it is counted: Postgres ends up with exactly the good views, end to end over real HTTP."""

from __future__ import annotations

import contextlib
import itertools
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import httpx
import jwt
import msgpack
import pytest
from service_fixtures import ApiProcess, counters_in_postgres, run_flusher_once, token

from daemon.settings import Settings

VIEW = "/api/v1/content/{}/views"
BATCH = "/api/v1/views/batch"
MSGPACK = {"Content-Type": "application/msgpack"}


def counter_row(views: int, watch_seconds: int = 0) -> dict[str, int]:
    return {
        "views": views,
        "likes": 0,
        "dislikes": 0,
        "comments": 0,
        "shares": 0,
        "watch_seconds": watch_seconds,
        "completions": 0,
        "skips": 0,
        "replays": 0,
    }


@dataclass
class Expected:
    """The good views the api acknowledged: content_id -> [views, watch_seconds]."""

    counts: dict[str, list[int]] = field(default_factory=dict)

    def add(self, content_id: str, views: int = 1, watch_seconds: int = 0) -> None:
        acc = self.counts.setdefault(content_id, [0, 0])
        acc[0] += views
        acc[1] += watch_seconds

    def rows(self) -> dict[str, dict[str, int]]:
        return {cid: counter_row(v, w) for cid, (v, w) in self.counts.items()}


@dataclass
class Refusals:
    """Collects every mismatch so that one run names all the inputs handled wrongly."""

    problems: list[str] = field(default_factory=list)

    def check(
        self,
        case: str,
        response: httpx.Response,
        status: int,
        code: str,
        *,
        header: str | None = None,
        index: int | None = None,
    ) -> None:
        try:
            body = response.json()
        except ValueError:
            self.problems.append(
                f"{case}: {response.status_code} with a body that is not JSON: {response.text!r}"
            )
            return
        if response.status_code != status or not isinstance(body, dict) or body.get("error") != code:
            self.problems.append(f"{case}: expected {status} {code}, got {response.status_code} {body!r}")
            return
        if not response.headers.get("content-type", "").startswith("application/json"):
            self.problems.append(f"{case}: content-type {response.headers.get('content-type')!r}")
        if not isinstance(body.get("message"), str) or not body["message"]:
            self.problems.append(f"{case}: no human-readable message in {body!r}")
        if header is not None and header not in response.headers:
            self.problems.append(f"{case}: no {header} header")
        if index is not None and body.get("index") != index:
            self.problems.append(f"{case}: expected index {index}, got {body.get('index')!r}")

    def assert_none(self) -> None:
        assert not self.problems, "bad inputs handled wrongly:\n" + "\n".join(self.problems)


@pytest.fixture
def ingest_headers() -> dict[str, str]:
    return {**MSGPACK, "Authorization": f"Bearer {token(scope='ingest')}"}


@pytest.fixture
def drained(migrated: Settings, start_api: Callable[..., ApiProcess]) -> Iterator[ApiProcess]:
    """An api whose buffer drains to Redis quickly."""
    yield start_api(migrated.replace(buffer_flush_interval_ms=20))


def finish_and_read_postgres(api: ApiProcess) -> dict[str, dict[str, int]]:
    """SIGTERM drains the api's buffer to Redis; one flusher pass takes it to Postgres."""
    assert api.stop() == 0
    run_flusher_once(api.settings)
    return counters_in_postgres(api.settings.database_url)


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def post_good_single_views(client: httpx.Client, expected: Expected) -> None:
    for content_id, body in [
        ("good-a", None),
        ("good-a", {"watch_seconds": 30}),
        ("good_b.1:x-Y", {}),
        ("good_b.1:x-Y", {"watch_seconds": 0}),
        ("c" * 128, {"watch_seconds": 86_400}),
    ]:
        response = (
            client.post(VIEW.format(content_id), json=body)
            if body is not None
            else client.post(VIEW.format(content_id))
        )
        assert response.status_code == 202, (content_id, response.text)
        expected.add(content_id, 1, (body or {}).get("watch_seconds", 0))
    # A present and valid token is fine on a single view too.
    response = client.post(VIEW.format("good-a"), headers=bearer(token()))
    assert response.status_code == 202, response.text
    expected.add("good-a")


def test_bad_single_views_get_their_documented_error_and_are_not_counted(drained: ApiProcess) -> None:
    client = drained.client
    expected, refusals = Expected(), Refusals()

    # Given some good single views were acknowledged
    post_good_single_views(client, expected)

    # When every kind of bad single view is thrown at the api
    for case, content_id in [
        ("content id too long", "x" * 129),
        ("content id with a space", "bad%20id"),
        ("content id with a percent-encoded slash", "bad%2Fid"),
        ("content id with unicode", "caf%C3%A9"),
        ("content id with a quote", "bad%27id"),
    ]:
        response = client.post(VIEW.format(content_id))
        if case.endswith("slash") and response.status_code == 404:
            continue  # the router may see the decoded '/' as another path: a 404 counts nothing either
        refusals.check(case, response, 422, "invalid_content_id")

    for case, body, status, code in [
        ("body not JSON", b"{not json", 400, "malformed_body"),
        ("body truncated JSON", b'{"watch_seconds": 1', 400, "malformed_body"),
        # (schemathesis found this one: bytes.strip() took it for an empty body and counted a view)
        ("body of non-JSON whitespace (form feed)", b"\x0c\t", 400, "malformed_body"),
        ("body a JSON array", b"[1, 2]", 422, "invalid_body"),
        ("body a JSON string", b'"watch"', 422, "invalid_body"),
        ("body a JSON number", b"5", 422, "invalid_body"),
        ("body null", b"null", 422, "invalid_body"),
        ("unknown field", b'{"watch_seconds": 1, "content_id": "x"}', 422, "unknown_field"),
        ("unknown field only", b'{"seconds": 1}', 422, "unknown_field"),
        ("watch_seconds a string", b'{"watch_seconds": "5"}', 422, "invalid_watch_seconds"),
        ("watch_seconds negative", b'{"watch_seconds": -1}', 422, "invalid_watch_seconds"),
        ("watch_seconds a float", b'{"watch_seconds": 1.5}', 422, "invalid_watch_seconds"),
        ("watch_seconds true", b'{"watch_seconds": true}', 422, "invalid_watch_seconds"),
        ("watch_seconds false", b'{"watch_seconds": false}', 422, "invalid_watch_seconds"),
        ("watch_seconds over a day", b'{"watch_seconds": 86401}', 422, "invalid_watch_seconds"),
        ("watch_seconds huge", b'{"watch_seconds": 99999999999999999999}', 422, "invalid_watch_seconds"),
        ("body over 4096 bytes", b'{"watch_seconds": 1}' + b" " * 4100, 413, "body_too_large"),
    ]:
        # (An oversized body is refused unread; the server may then close the connection: use a new one.)
        with (
            httpx.Client(base_url=drained.base_url, timeout=10.0)
            if status == 413
            else nullcontext(client) as sender
        ):
            response = sender.post(
                VIEW.format("victim"), content=body, headers={"Content-Type": "application/json"}
            )
        refusals.check(case, response, status, code)

    # A body over the limit sent chunked, without Content-Length, is cut off as well.
    def chunks() -> Iterator[bytes]:
        yield b'{"watch_seconds": 1'
        for _ in range(10):
            yield b" " * 1000
        yield b"}"

    refusals.check(
        "chunked body over 4096 bytes",
        httpx.post(f"{drained.base_url}{VIEW.format('victim')}", content=chunks(), timeout=10.0),
        413,
        "body_too_large",
    )

    for case, authorization, code in [
        ("not a bearer token", "Basic dXNlcjpwYXNz", "invalid_token"),
        ("bearer without a token", "Bearer", "invalid_token"),
        ("garbage token", "Bearer not.a.jwt", "invalid_token"),
        (
            "token signed with another secret",
            f"Bearer {token(secret='another-secret-of-sufficient-length-0123')}",
            "invalid_token",
        ),
        ("expired token", f"Bearer {token(exp=int(time.time()) - 60)}", "token_expired"),
    ]:
        response = client.post(VIEW.format("victim"), headers={"Authorization": authorization})
        refusals.check(f"single view, {case}", response, 401, code, header="WWW-Authenticate")

    refusals.check("wrong method on a view", client.get(VIEW.format("victim")), 405, "method_not_allowed")
    refusals.check(
        "wrong method on a view (PUT)", client.put(VIEW.format("victim")), 405, "method_not_allowed"
    )
    refusals.check("unknown path", client.post("/api/v1/content/victim/viewz"), 404, "not_found")
    refusals.check("unknown path (GET)", client.get("/nothing-here"), 404, "not_found")

    # Then each was refused as documented, and Postgres holds exactly the good views
    refusals.assert_none()
    assert finish_and_read_postgres(drained) == expected.rows()


def test_bad_batches_get_their_documented_error_and_none_of_their_items_count(
    drained: ApiProcess, ingest_headers: dict[str, str]
) -> None:
    client = drained.client
    expected, refusals = Expected(), Refusals()

    # Given good batches were acknowledged, in msgpack and in JSON
    good = [{"content_id": f"batch-{i % 7}", "watch_seconds": i} for i in range(50)] + [
        {"content_id": "batch-0", "user_id": "u-1"}
    ]
    response = client.post(BATCH, content=msgpack.packb(good), headers=ingest_headers)
    assert (response.status_code, response.json()) == (202, {"accepted": len(good)})
    response = client.post(
        BATCH,
        json=[{"content_id": "batch-json"}] * 3,
        headers={"Authorization": ingest_headers["Authorization"]},
    )
    assert (response.status_code, response.json()) == (202, {"accepted": 3})
    for item in good:
        expected.add(item["content_id"], 1, item.get("watch_seconds", 0))
    expected.add("batch-json", 3)

    def victims(n: int = 40) -> list[dict[str, object]]:
        return [{"content_id": f"victim-{i % 5}", "watch_seconds": 7} for i in range(n)]

    # When batches that must be refused whole arrive
    body = msgpack.packb(victims())
    secret = "test-secret-that-is-long-enough-for-hs256-0123456789"
    for case, authorization, status, code in [
        ("no token", None, 401, "missing_token"),
        ("not a bearer token", "Basic dXNlcjpwYXNz", 401, "invalid_token"),
        ("garbage token", "Bearer abc.def.ghi", 401, "invalid_token"),
        (
            "token signed with another secret",
            f"Bearer {token(scope='ingest', secret='another-secret-of-sufficient-length-0123')}",
            401,
            "invalid_token",
        ),
        (
            "alg none token",
            "Bearer "
            + jwt.encode(
                {"sub": "user-1", "scope": "ingest", "exp": int(time.time()) + 3600}, None, algorithm="none"
            ),
            401,
            "invalid_token",
        ),
        (
            "RS-free HS384 token",
            "Bearer "
            + jwt.encode(
                {"sub": "user-1", "scope": "ingest", "exp": int(time.time()) + 3600},
                secret,
                algorithm="HS384",
            ),
            401,
            "invalid_token",
        ),
        ("expired token", f"Bearer {token(scope='ingest', exp=int(time.time()) - 60)}", 401, "token_expired"),
        (
            "token not valid yet",
            f"Bearer {token(scope='ingest', nbf=int(time.time()) + 3600)}",
            401,
            "token_not_yet_valid",
        ),
        (
            "token without sub",
            "Bearer "
            + jwt.encode({"scope": "ingest", "exp": int(time.time()) + 3600}, secret, algorithm="HS256"),
            401,
            "invalid_token",
        ),
        ("token with an empty sub", f"Bearer {token(sub='', scope='ingest')}", 401, "invalid_token"),
        ("token without the ingest scope", f"Bearer {token()}", 403, "insufficient_scope"),
        ("token with another scope", f"Bearer {token(scope='read write')}", 403, "insufficient_scope"),
    ]:
        headers = dict(MSGPACK)
        if authorization is not None:
            headers["Authorization"] = authorization
        header = "WWW-Authenticate" if status == 401 else None
        refusals.check(
            f"batch, {case}", client.post(BATCH, content=body, headers=headers), status, code, header=header
        )

    for case, raw, status, code in [
        ("garbage msgpack", b"\xc1\xc1\xc1", 400, "malformed_body"),
        ("truncated msgpack", msgpack.packb(victims())[:-3], 400, "malformed_body"),
        ("msgpack with trailing data", msgpack.packb(victims()) + b"\x01", 400, "malformed_body"),
        ("msgpack map with integer keys", msgpack.packb([{1: 2}]), 400, "malformed_body"),
        ("not an array", msgpack.packb({"content_id": "victim-0"}), 422, "invalid_body"),
        ("a string", msgpack.packb("victim-0"), 422, "invalid_body"),
        ("10,001 items", msgpack.packb([{"content_id": "victim-0"}] * 10_001), 413, "too_many_items"),
    ]:
        refusals.check(case, client.post(BATCH, content=raw, headers=ingest_headers), status, code)

    # A bad item in the middle of good ones: 422 names its index and nothing of the batch counts.
    middle = 23
    for case, bad_item, code in [
        ("item not an object", ["victim-0"], "invalid_item"),
        ("item is a number", 5, "invalid_item"),
        ("item without content_id", {"watch_seconds": 3}, "invalid_content_id"),
        ("item with an unknown field", {"content_id": "victim-0", "likes": 1}, "unknown_field"),
        ("content_id a number", {"content_id": 17}, "invalid_content_id"),
        ("content_id bytes", {"content_id": b"victim-0"}, "invalid_content_id"),
        ("content_id with a space", {"content_id": "victim 0"}, "invalid_content_id"),
        ("content_id too long", {"content_id": "v" * 129}, "invalid_content_id"),
        ("content_id empty", {"content_id": ""}, "invalid_content_id"),
        ("content_id with a newline", {"content_id": "victim-0\nvictim-1"}, "invalid_content_id"),
        ("user_id a number", {"content_id": "victim-0", "user_id": 5}, "invalid_user_id"),
        ("user_id with bad chars", {"content_id": "victim-0", "user_id": "a b"}, "invalid_user_id"),
        ("watch_seconds a string", {"content_id": "victim-0", "watch_seconds": "7"}, "invalid_watch_seconds"),
        ("watch_seconds negative", {"content_id": "victim-0", "watch_seconds": -7}, "invalid_watch_seconds"),
        ("watch_seconds a float", {"content_id": "victim-0", "watch_seconds": 7.5}, "invalid_watch_seconds"),
        ("watch_seconds true", {"content_id": "victim-0", "watch_seconds": True}, "invalid_watch_seconds"),
        ("watch_seconds false", {"content_id": "victim-0", "watch_seconds": False}, "invalid_watch_seconds"),
        (
            "watch_seconds infinite",
            {"content_id": "victim-0", "watch_seconds": float("inf")},
            "invalid_watch_seconds",
        ),
        (
            "watch_seconds empty string",
            {"content_id": "victim-0", "watch_seconds": ""},
            "invalid_watch_seconds",
        ),
        (
            "watch_seconds over a day",
            {"content_id": "victim-0", "watch_seconds": 86_401},
            "invalid_watch_seconds",
        ),
    ]:
        items: list[object] = list(victims(50))
        items[middle] = bad_item
        # Alone among good items, then followed by a second bad item (the error names the first one).
        response = client.post(BATCH, content=msgpack.packb(items), headers=ingest_headers)
        refusals.check(f"batch, {case} at index {middle}", response, 422, code, index=middle)
        items[40] = {"content_id": 5} if code == "unknown_field" else {"content_id": "victim-0", "nope": True}
        response = client.post(BATCH, content=msgpack.packb(items), headers=ingest_headers)
        refusals.check(
            f"batch, {case} at index {middle} and another after", response, 422, code, index=middle
        )

    # The same validation in a JSON batch.
    json_items: list[object] = list(victims(10))
    json_items[4] = {"content_id": "victim-0", "watch_seconds": "x"}
    refusals.check(
        "JSON batch, bad item",
        client.post(BATCH, json=json_items, headers={"Authorization": ingest_headers["Authorization"]}),
        422,
        "invalid_watch_seconds",
        index=4,
    )
    refusals.check(
        "JSON batch, not JSON",
        client.post(
            BATCH,
            content=b"[{",
            headers={"Authorization": ingest_headers["Authorization"], "Content-Type": "application/json"},
        ),
        400,
        "malformed_body",
    )

    # Bodies over 4 MiB, with Content-Length and chunked without it.
    big = msgpack.packb([{"content_id": "victim-0", "user_id": "u" * 128}] * 9_000)
    big += b"\x00" * (4 * 1024 * 1024 + 1 - len(big))
    assert len(big) > 4 * 1024 * 1024
    refusals.check("batch over 4 MiB", post_big(drained, big, ingest_headers), 413, "body_too_large")

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    refusals.check(
        "chunked batch over 4 MiB", post_big(drained, chunked(), ingest_headers), 413, "body_too_large"
    )

    for case, content_type in [
        ("text/plain", "text/plain"),
        ("form data", "application/x-www-form-urlencoded"),
        ("protobuf", "application/x-protobuf"),
    ]:
        headers = {**ingest_headers, "Content-Type": content_type}
        refusals.check(
            f"batch as {case}",
            client.post(BATCH, content=body, headers=headers),
            415,
            "unsupported_media_type",
        )

    refusals.check(
        "GET on the batch endpoint", client.get(BATCH, headers=ingest_headers), 405, "method_not_allowed"
    )
    refusals.check(
        "DELETE on the batch endpoint",
        client.delete(BATCH, headers=ingest_headers),
        405,
        "method_not_allowed",
    )
    refusals.check(
        "unknown batch path",
        client.post(BATCH + "es", content=body, headers=ingest_headers),
        404,
        "not_found",
    )

    # An empty batch is accepted and counts nothing.
    response = client.post(BATCH, content=msgpack.packb([]), headers=ingest_headers)
    assert (response.status_code, response.json()) == (202, {"accepted": 0})

    # Then only the good batches are in Postgres, exactly
    refusals.assert_none()
    assert finish_and_read_postgres(drained) == expected.rows()


def post_big(api: ApiProcess, content: bytes | Iterator[bytes], headers: dict[str, str]) -> httpx.Response:
    """POST a body the server should refuse before reading it all.

    Over a raw socket: a server answering 413 early may close the connection while the client is still
    sending, and an HTTP client that writes the whole body before reading can then lose the answer. This
    one stops sending as soon as the answer arrives (or the server stops reading) and reads it.
    """
    chunks: Iterator[bytes]
    head = f"POST {BATCH} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    if isinstance(content, bytes):
        head += f"Content-Length: {len(content)}\r\n"
        chunks = (content[i : i + 65536] for i in range(0, len(content), 65536))
    else:
        head += "Transfer-Encoding: chunked\r\n"
        chunks = itertools.chain((b"%x\r\n%s\r\n" % (len(c), c) for c in content), [b"0\r\n\r\n"])
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n")
        for chunk in chunks:
            if select.select([sock], [], [], 0.001)[0]:
                break  # the answer (or the close) is here: stop sending
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        raw = b""
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(65536):
                raw += data
    head_raw, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head_raw.decode("latin-1").split("\r\n")
    if not status_line:
        raise AssertionError("the server closed the connection without an answer")
    response_headers = [tuple(line.split(": ", 1)) for line in header_lines]
    return httpx.Response(int(status_line.split()[1]), headers=response_headers, content=body)
