"""api.hotpaths.HotPaths: which requests go straight to a hot endpoint and which to the Starlette app.

The end-to-end behaviour of the hot endpoints (likes, dislikes, single views) is tested against a live
``engagementd api`` elsewhere (test_reactions, test_views_*); these tests pin the dispatch rules with
plain ASGI callables standing in for the endpoints and for the app behind.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from starlette.routing import Route

from api.hotpaths import HotPaths

LIKE = "/api/v1/content/{contentId}/like"


class Recorder:
    """An ASGI callable that records the scopes it got and answers 204."""

    def __init__(self, name: str, fail: bool = False) -> None:
        self.__name__ = name
        self.fail = fail
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(dict(scope))
        if self.fail:
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def make(fail: bool = False) -> tuple[HotPaths, Recorder, Recorder, Recorder, list[tuple[Any, ...]]]:
    behind, like, unlike = Recorder("app"), Recorder("like", fail), Recorder("unlike")
    observed: list[tuple[Any, ...]] = []
    hot = HotPaths(
        behind,
        [Route(LIKE, like, methods=["POST"]), Route(LIKE, unlike, methods=["DELETE"])],
        lambda *args: observed.append(args),
    )
    return hot, behind, like, unlike, observed


def call(app: HotPaths, method: str, path: str, root_path: str = "") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_a_hot_path_goes_to_its_endpoint_with_the_scope_the_router_would_give() -> None:
    hot, behind, like, unlike, _ = make()
    assert call(hot, "POST", "/api/v1/content/v-1/like")[0]["status"] == 204
    call(hot, "DELETE", "/api/v1/content/v%20x/like")
    assert behind.scopes == []
    assert like.scopes[0]["path_params"] == {"contentId": "v-1"}
    assert like.scopes[0]["app"] is behind and like.scopes[0]["endpoint"] is like
    assert like.scopes[0]["route"].path == LIKE
    assert unlike.scopes[0]["path_params"] == {"contentId": "v%20x"}


@pytest.mark.parametrize(
    ("method", "path", "root_path"),
    [
        ("GET", "/api/v1/content/v-1/like", ""),  # another method: Starlette answers 405 with Allow
        ("PUT", "/api/v1/content/v-1/like", ""),
        ("POST", "/api/v1/content//like", ""),  # empty id
        ("POST", "/api/v1/content/v-1/like/", ""),  # trailing slash
        ("POST", "/api/v1/content/a/b/like", ""),  # an id with a slash: no route matches it
        ("POST", "/api/v1/content/v-1/likes", ""),
        ("POST", "/api/v1/content/v-1", ""),
        ("POST", "/api/v1/creators/c-1/subscribe", ""),
        ("POST", "/api/v1/content/v-1/like", "/mounted"),  # a root path: Starlette strips it
    ],
)
def test_everything_else_goes_to_the_app_behind(method: str, path: str, root_path: str) -> None:
    hot, behind, like, unlike, _ = make()
    call(hot, method, path, root_path)
    assert [s["path"] for s in behind.scopes] == [path]
    assert like.scopes == [] and unlike.scopes == []


def test_lifespan_goes_to_the_app_behind() -> None:
    hot, behind, *_ = make()
    scope = {"type": "lifespan"}

    async def run() -> None:
        await hot(scope, None, None)  # type: ignore[arg-type]

    behind.fail = True  # the recorder records, then raises: HotPaths must not catch it
    with pytest.raises(RuntimeError):
        asyncio.run(run())
    assert behind.scopes == [scope]


def test_an_endpoint_that_fails_answers_500_internal_error_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hot, _, _, _, observed = make(fail=True)
    with caplog.at_level(logging.ERROR, logger="api.hotpaths"):
        sent = call(hot, "POST", "/api/v1/content/v-1/like")
    assert sent[0]["status"] == 500
    assert orjson.loads(sent[1]["body"])["error"] == "internal_error"
    assert observed == [(LIKE, "POST", 500, 0.0)]
    assert "unhandled error on POST /api/v1/content/v-1/like" in caplog.text


def test_only_content_item_routes_can_be_hot() -> None:
    endpoint = Recorder("x")
    for path in ("/api/v1/creators/{creatorId}/subscribe", "/api/v1/content/{contentId}", "/healthz"):
        with pytest.raises(ValueError, match="not a hot path"):
            HotPaths(endpoint, [Route(path, endpoint, methods=["POST"])], lambda *a: None)
