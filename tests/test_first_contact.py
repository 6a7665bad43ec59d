"""What a new user or an operator meets first (issue 18): a client that hangs up mid-body is a 499, not a
500; one Content-Type rule for every JSON body; a single view's Idempotency-Key compares the parsed
request; no label of /metrics takes values from outside a closed set; the panels' series exist from the
start."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from service_fixtures import ApiProcess, service_env, token, wait_until

from daemon.proc.servers import free_port
from daemon.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _auth(user: str, scope: str = "") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, scope=scope)}"}


def _requests(api: ApiProcess) -> dict[tuple[str, str, str], float]:
    """engagement_http_requests_total by (route, method, status)."""
    found = {}
    pattern = r'^engagement_http_requests_total\{method="([^"]*)",route="([^"]*)",status="([^"]*)"\} (\S+)$'
    for method, route, status, value in re.findall(pattern, api.client.get("/metrics").text, re.M):
        found[(route, method, status)] = float(value)
    assert found, "no engagement_http_requests_total sample"
    return found


def _hang_up_mid_body(api: ApiProcess, path: str, *headers: str) -> None:
    """Headers promising 100 bytes, 2 sent, then the connection closed."""
    with socket.create_connection(("127.0.0.1", api.port)) as sock:
        head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 100", *headers, "", ""]
        sock.sendall("\r\n".join(head).encode() + b"{}")


CASES = [
    ("/api/v1/content/{contentId}/views", "/api/v1/content/clip/views", ()),
    ("/api/v1/views/batch", "/api/v1/views/batch", ("ingest",)),
    ("/api/v1/content/{contentId}/comments", "/api/v1/content/clip/comments", ("",)),
]


def test_a_client_that_hangs_up_mid_body_is_a_499_and_one_log_line(
    migrated: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "api.log"
    api = ApiProcess(migrated, log_path=log)
    try:
        for _, path, scope in CASES:
            headers = [f"Authorization: Bearer {token('u1', scope=scope[0])}"] if scope else []
            _hang_up_mid_body(api, path, "Content-Type: application/json", *headers)
        wait_until(
            lambda: all(_requests(api).get((route, "POST", "499")) == 1 for route, _, _ in CASES),
            what=f"each hang-up counted as a 499: {_requests(api)}",
        )
        assert not [key for key in _requests(api) if key[2] == "500"]
        # and the api still serves the next request
        assert api.client.post("/api/v1/content/clip/views").status_code == 202
    finally:
        api.stop()
    text = log.read_text()
    assert "Traceback" not in text and "unhandled error" not in text, text
    lines = [line for line in text.splitlines() if "closed the connection before sending its body" in line]
    assert len(lines) == 3, text


@pytest.mark.parametrize(
    ("path", "user", "scope", "body"),
    [
        ("/api/v1/content/clip/views", "u1", "", {"watch_seconds": 5}),
        ("/api/v1/content/clip/comments", "u1", "", {"body": "hi"}),
        ("/api/v1/content/clip/shares", "u1", "", {"platform": "x"}),
        ("/api/v1/stats/batch", "u1", "", {"content_ids": ["clip"]}),
        ("/api/v1/users/me/playlists", "u1", "", {"name": "mine"}),
    ],
)
def test_every_json_body_follows_one_content_type_rule(api: ApiProcess, path, user, scope, body) -> None:
    """A JSON body sent as another media type (curl -d sends a form type) is 415, as on the batch
    endpoint; application/json (any parameters) and no Content-Type at all are JSON."""
    raw = json.dumps(body).encode()
    headers = _auth(user, scope)
    form = api.client.post(
        path, content=raw, headers={**headers, "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert (form.status_code, form.json()["error"]) == (415, "unsupported_media_type")
    for content_type in ("application/json; charset=utf-8", None):
        extra = {"Content-Type": content_type} if content_type else {}
        r = api.client.post(path, content=raw, headers={**headers, **extra})
        assert r.status_code in (200, 201, 202), (content_type, r.text)


def test_a_single_views_idempotency_key_compares_the_parsed_request(api: ApiProcess) -> None:
    path = "/api/v1/content/idem-clip/views"
    key = {"Idempotency-Key": "view-1", "Content-Type": "application/json"}
    first = api.client.post(path, content=b'{"watch_seconds": 5, "event_type": "media_started"}', headers=key)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    again = api.client.post(path, content=b'{"event_type":"media_started","watch_seconds":5}', headers=key)
    assert (again.status_code, again.headers.get("idempotent-replayed")) == (202, "true")
    other = api.client.post(path, content=b'{"watch_seconds": 6}', headers=key)
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_key_reused")
    wait_until(lambda: api.client.get("/api/v1/content/idem-clip/stats").json()["views"] == 1, what="1 view")
    time.sleep(0.3)  # three drain intervals more: the replay added nothing
    assert api.client.get("/api/v1/content/idem-clip/stats").json()["views"] == 1


def test_made_up_methods_add_no_series(api: ApiProcess) -> None:
    before = set(_requests(api))
    for n in range(50):
        api.client.request(f"FOO{n}", "/api/v1/content/clip/stats")
        api.client.request(f"BAR{n}", f"/nowhere/{n}")
    methods = {method for _, method, _ in set(_requests(api)) - before}
    assert methods <= {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other"}, methods
    assert len(set(_requests(api)) - before) <= 3


def _dashboard_series(job: str) -> set[str]:
    panels = json.loads((ROOT / "grafana" / "dashboard.json").read_text())["panels"]
    names = set()
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            if f'job="{job}"' in expr:
                names |= set(re.findall(r"\b(engagement_[a-z0-9_]+)\{", expr))
    return names


def test_every_api_series_a_panel_queries_exists_from_the_start(api: ApiProcess) -> None:
    """Kafka disabled, no request served yet (but the scrape itself): every series the dashboard reads
    from the api exists, at zero, so that panels show 0 and not "no data"."""
    text = api.client.get("/metrics").text
    exported = set(re.findall(r"^(engagement_[a-z0-9_]+)(?:\{| )", text, re.M))
    missing = {name for name in _dashboard_series("api") if name not in exported}
    assert not missing, sorted(missing)


def test_integral_numbers_are_integers_and_an_empty_cursor_is_none(api: ApiProcess) -> None:
    """JSON Schema's integer admits 37.0: so does every integer field; 37.5 stays a 422."""
    user = _auth("u-int")
    ingest = _auth("ingester", "ingest")
    r = api.client.post("/api/v1/content/int-clip/views", json={"watch_seconds": 37.0})
    assert r.status_code == 202, r.text
    r = api.client.post(
        "/api/v1/views/batch", json=[{"content_id": "int-clip", "watch_seconds": 3.0}], headers=ingest
    )
    assert r.status_code == 202, r.text
    r = api.client.post(
        "/api/v1/views/batch", json=[{"content_id": "int-clip", "watch_seconds": 3.5}], headers=ingest
    )
    assert (r.status_code, r.json()["error"], r.json()["index"]) == (422, "invalid_watch_seconds", 0)
    wait_until(
        lambda: api.client.get("/api/v1/content/int-clip/stats").json()["watch_seconds"] == 40, what="40 s"
    )
    r = api.client.put(
        "/api/v1/users/me/history/int-clip", json={"progress_pct": 10, "position_seconds": 12.0}, headers=user
    )
    assert r.status_code in (200, 204), r.text
    first = api.client.post("/api/v1/content/int-clip/comments", json={"body": "top"}, headers=user).json()
    reply = {"body": "re", "parent_comment_id": float(first["comment_id"])}
    r = api.client.post("/api/v1/content/int-clip/comments", json=reply, headers=user)
    assert r.status_code == 201 and r.json()["parent_comment_id"] == first["comment_id"], r.text
    playlist = api.client.post("/api/v1/users/me/playlists", json={"name": "p"}, headers=user).json()
    items = f"/api/v1/users/me/playlists/{playlist['playlist_id']}/items"
    r = api.client.post(items, json={"content_id": "int-clip", "position": 0.0}, headers=user)
    assert r.status_code == 201, r.text
    r = api.client.post(items, json={"content_id": "int-clip-2", "position": 0.5}, headers=user)
    assert (r.status_code, r.json()["error"]) == (422, "invalid_position")
    r = api.client.get("/api/v1/content/int-clip/comments", params={"cursor": ""})
    assert r.status_code == 200 and len(r.json()["items"]) == 1, r.text


def test_every_flusher_series_a_panel_queries_exists_from_the_start(migrated: Settings) -> None:
    """The flusher's panels too: its /metrics, scraped as soon as it answers (the Redis memory sample
    and the row filters are taken at start), has every series the dashboard reads from the flusher."""
    port = free_port()
    flusher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon.proc.cli",
            "flusher",
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
        ],
        env=service_env(migrated),
        cwd=ROOT,
    )
    try:

        def exported() -> set[str]:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.TransportError:
                return set()
            return set(re.findall(r"^(engagement_[a-z0-9_]+)(?:\{| )", text, re.M))

        wanted = _dashboard_series("flusher")
        wait_until(lambda: wanted <= exported(), what=f"the flusher's series: {sorted(wanted - exported())}")
    finally:
        flusher.terminate()
        flusher.wait(30)
