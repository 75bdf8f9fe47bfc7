"""A real HTTP webhook receiver on 127.0.0.1 that records every request and checks its signature.

Each path is one subscriber endpoint with its own secret. `respond(path, event_id, attempt)` decides the
status of each request (default 200), so a test scripts "500 twice, then 200" or "always 500". A 3xx
answer carries `Location: <redirect_to>`. Every method is answered and recorded (a client that followed a
302 would come back with a GET).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from enrollstream.adapters.webhooks.signing import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    InvalidSignature,
    verify_signature,
)


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what we answered
    signature_ok: bool
    signature_error: str
    method: str = "POST"
    received_at: float = 0.0  # time.monotonic() when it arrived

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def event_id(self) -> str:
        return self.headers.get(EVENT_ID_HEADER, "")


@dataclass
class RecordingWebhookServer:
    secrets: dict[str, str] = field(default_factory=dict)  # path -> secret
    respond: Callable[[str, str, int], int] = lambda path, event_id, attempt: 200
    requests: list[ReceivedRequest] = field(default_factory=list)
    redirect_to: str = ""  # the Location of 3xx answers
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        path = request.path
        secret = self.secrets.get(path)
        ok, error = False, "no secret for this path"
        if secret is not None:
            try:
                verify_signature(secret, request.headers.get(SIGNATURE_HEADER), body, now=time.time())
                ok, error = True, ""
            except InvalidSignature as exc:
                error = str(exc)
        event_id = request.headers.get(EVENT_ID_HEADER, "")
        attempt = 1 + sum(1 for r in self.requests if r.path == path and r.event_id == event_id)
        status = self.respond(path, event_id, attempt)
        received = ReceivedRequest(
            path, dict(request.headers), body, status, ok, error, request.method, time.monotonic()
        )
        async with self._changed:
            self.requests.append(received)
            self._changed.notify_all()
        headers = {"Location": self.redirect_to} if 300 <= status < 400 and self.redirect_to else {}
        return web.Response(status=status, text="ok" if status < 300 else "no", headers=headers)

    def at(self, path: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path == path]

    async def wait_for(self, done: Callable[[list[ReceivedRequest]], bool], timeout: float = 30.0) -> None:
        """Until `done(requests)` holds (checked at each request), else TimeoutError."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: done(self.requests)), timeout)
