"""``GET /live/{contentId}``: a small page that shows an item's live counts as they change, so a person
can watch the live stream work (``make run``, then open http://127.0.0.1:8080/live/<id> and post views).
It opens ``/api/v1/content/{contentId}/live`` as a WebSocket (``?transport=sse``: as an EventSource) and
reconnects when the stream ends."""

from __future__ import annotations

import html

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from api.errors import api_error
from api.services import Services
from daemon.errors import DomainError

PAGE_ROUTE = "/live/{contentId}"
FIELDS = ("views", "likes", "dislikes", "comments", "shares", "unique_viewers")

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Live counts of {title}</title>
<style>
  body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
  .counts {{ display: flex; gap: 2rem; flex-wrap: wrap; }}
  .count b {{ display: block; font-size: 3rem; font-variant-numeric: tabular-nums; }}
  #status {{ color: #777; }}
</style>
</head>
<body>
<h1>Live counts of <code>{title}</code></h1>
<div class="counts">{cells}</div>
<p id="status">connecting</p>
<script>
const contentId = {content_id};
const fields = {fields};
const useSse = new URLSearchParams(location.search).get("transport") === "sse";
const path = "/api/v1/content/" + encodeURIComponent(contentId) + "/live";
const status = document.getElementById("status");
function show(message) {{
  const counts = JSON.parse(message);
  for (const field of fields) {{
    if (field in counts) document.getElementById(field).textContent = counts[field];
  }}
  status.textContent = "as of " + counts.ts + (useSse ? " (Server-Sent Events)" : " (WebSocket)");
}}
function connect() {{
  if (useSse) {{
    const source = new EventSource(path);
    source.onmessage = (event) => show(event.data);
    source.onerror = () => {{ status.textContent = "reconnecting"; }};
    return;
  }}
  const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + path);
  socket.onmessage = (event) => show(event.data);
  socket.onclose = (event) => {{
    status.textContent = "closed (" + event.code + "), reconnecting";
    setTimeout(connect, 1000);
  }};
}}
connect();
</script>
</body>
</html>
"""


async def page(request: Request) -> Response:
    services: Services = request.app.state.services
    try:
        content_id = services.bodies.content_id(request.path_params["contentId"])
    except DomainError as exc:
        return api_error(exc).response()
    cells = "".join(
        f'<div class="count"><b id="{field}">-</b>{field.replace("_", " ")}</div>' for field in FIELDS
    )
    body = _PAGE.format(
        title=html.escape(content_id),
        cells=cells,
        content_id=orjson.dumps(content_id).decode(),
        fields=orjson.dumps(FIELDS).decode(),
    )
    return HTMLResponse(body, headers={"Cache-Control": "no-cache"})
