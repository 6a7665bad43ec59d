"""Serving the API with granian (ASGI interface, uvloop): on this machine it measured about 1.6x
uvicorn on a bare route. Settings reach the worker processes through the environment.

On SIGTERM a granian worker stops serving at once: it would drop every WebSocket without a close frame
(the client sees 1006) and wait for event streams that never end. ``before_worker_stops`` lets the app
close its long-lived connections first (api/app.py: code 1001, streams ended), then granian stops as
before and the lifespan shutdown drains the view buffer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

from daemon.logs import granian_config
from daemon.settings import Settings

log = logging.getLogger(__name__)


def serve_api(host: str, port: int, workers: int, settings: Settings) -> None:
    with tempfile.TemporaryDirectory(prefix="engagementd-metrics-") as metrics_dir:
        if workers > 1 and not settings.metrics_dir:
            settings = settings.replace(metrics_dir=metrics_dir)
        os.environ.update(settings.as_env())
        _serve(host, port, workers, settings)


def _serve(host: str, port: int, workers: int, settings: Settings) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        "api.app:create_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        log_level=settings.log_level.lower(),  # type: ignore[arg-type]
        log_dictconfig=granian_config(settings),
        log_access=False,
        backlog=2048,
        websockets=True,
    ).serve()


def before_worker_stops(hook: Callable[[], Awaitable[object]]) -> None:
    """In a granian worker (call it from the app factory, which granian runs before it installs its
    signal handlers): on SIGINT or SIGTERM, await ``hook()`` before granian's own shutdown begins.

    granian offers no such hook: this wraps ``granian._signals.set_loop_signals`` (granian 2.x), and
    logs a warning and changes nothing when that is not there.
    """
    try:
        import granian._signals as granian_signals
    except ImportError:
        return
    install = getattr(granian_signals, "set_loop_signals", None)
    if install is None or getattr(install, "wrapped_by_engagementd", False):
        if install is None:
            log.warning("granian has no set_loop_signals: live connections end without a close frame")
        return

    def set_loop_signals(loop: asyncio.AbstractEventLoop) -> Any:
        stop_event = install(loop)  # granian's: set() starts its shutdown
        stopping: list[asyncio.Task[None]] = []

        async def stop() -> None:
            try:
                await hook()
            except Exception:  # noqa: BLE001 - granian must stop whatever the hook did
                log.exception("closing live connections before stopping failed")
            finally:
                stop_event.set()

        def on_signal(signum: int, frame: object) -> None:
            if stopping:  # a second signal: stop now
                stop_event.set()
            else:
                stopping.append(loop.create_task(stop()))

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig, None)
        return stop_event

    set_loop_signals.wrapped_by_engagementd = True  # type: ignore[attr-defined]
    granian_signals.set_loop_signals = set_loop_signals
