"""Listen at once, serve when ready: the ASGI app ``vitres serve`` runs while the model
loads and calibrates.

Building a server (loading the model, calibrating latencies, preparing backends) takes
seconds to minutes. Listening only afterwards leaves an orchestrator unable to tell
"starting" from "dead". :class:`StartingApp` listens from the first second and builds the
real app in a thread; until it is ready:

* ``GET /v2/health/live`` answers 200 (the process is alive);
* ``GET /healthz``, ``GET /v2/health/ready`` and ``GET /v2/models/NAME/ready`` answer 503
  (``starting``), so a readiness probe waits;
* every other request answers 503 ``starting`` with ``Retry-After``.

Then every request goes to the real app, whose lifespan (worker, heartbeat) is started
first and stopped at shutdown. If the build fails, the error is kept and the server is
asked to stop; :func:`vitres.serve.launch.serve` raises it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["StartingApp"]

logger = logging.getLogger("vitres.serve")

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
_READY_PATHS = ("/healthz", "/v2/health/ready")


class StartingApp:
    """The ASGI app that answers while ``build()`` makes the real one.

    Args:
        build: Returns the real app (a :class:`vitres.serve.app.ServerApp`); runs in a
            thread.
        on_ready: Called with the real app once it serves (e.g. to log its settings).
        on_failure: Called with the error when ``build`` raises (e.g. to stop the server).
        clock: Time source for the "so far" in the answers.
    """

    def __init__(
        self,
        build: Callable[[], Any],
        on_ready: Callable[[Any], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.build = build
        self.on_ready = on_ready
        self.on_failure = on_failure
        self.clock = clock
        self.started = clock()
        self.app: Any = None
        self.error: BaseException | None = None
        self._lifespan: Any = None
        self._task: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self.app is not None

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._run_lifespan(receive, send)
        elif self.app is not None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await self._starting(scope, send)

    async def _starting(self, scope: dict, send: Send) -> None:
        path = scope.get("path", "")
        so_far = self.clock() - self.started
        headers = [(b"content-type", b"application/json")]
        if path == "/v2/health/live":
            status, body = 200, {"live": True}
        elif path in _READY_PATHS or (path.startswith("/v2/models/") and path.endswith("/ready")):
            status = 503
            body = {"ready": False, "status": "starting", "seconds": round(so_far, 1)}
        else:
            status = 503
            body = {
                "error": "starting",
                "message": f"the server is starting (loading and calibrating the model, "
                f"{so_far:.0f} s so far); retry in a few seconds",
            }
            headers.append((b"retry-after", b"2"))
        data = json.dumps(body).encode()
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _build(self) -> None:
        try:
            app = await asyncio.get_running_loop().run_in_executor(None, self.build)
            lifespan = app.api.router.lifespan_context(app.api)
            await lifespan.__aenter__()
        except BaseException as error:  # noqa: BLE001 - kept and reported, the server stops
            self.error = error
            logger.error("the server could not start: %s", error)
            if self.on_failure is not None:
                self.on_failure(error)
            return
        self._lifespan = lifespan
        self.app = app
        if self.on_ready is not None:
            self.on_ready(app)

    async def _run_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._task = asyncio.get_running_loop().create_task(self._build())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._task is not None and not self._task.done():
                    await asyncio.wait([self._task])  # a build in progress ends first
                if self._lifespan is not None:
                    await self._lifespan.__aexit__(None, None, None)
                await send({"type": "lifespan.shutdown.complete"})
                return
