"""One-click unsubscribe endpoint (RFC 8058), the `unsubscribe` role.

    POST /unsubscribe/<token>   body List-Unsubscribe=One-Click  -> OptOut on the commands topic, 200
    GET  /unsubscribe/<token>                                    -> a confirmation page with a form, 200
    GET  /o/<token>.gif      the open-tracking pixel             -> a 1x1 GIF at once; OpenDetected published
    POST /webhooks/bounces/<endpoint>   a provider's bounce/complaint callback (runtime/bounce_webhooks.py)

The pixel (docs/delivery.md "Open tracking") is answered before and regardless of publishing: the image
never waits for Kafka. Its OpenDetected has a command id derived from the message id, so however often
the pixel is loaded (proxies, prefetchers, the person opening twice) the decider records one open; this
process also remembers the last `OPENS_REMEMBERED` published ids and does not publish those again. A
failed publish is logged and counted, and the next load of the same pixel tries again. A token that is
malformed or not ours is 404 (nothing published).

GET never unsubscribes: mail scanners and link previewers fetch every URL in a message. A token that is
malformed or not signed by one of our keys is 400; a failure to publish the command is 503 (the mail
client or the person may try again: the command id is deterministic, so a repeat is one opt-out).

Slow and idle clients cannot hold it (the server is aiohttp's, on an asyncio listener of our own):
- `idle_timeout_s`: a connection that has not sent a complete request line and headers this long after
  it opened (or after its last response) is closed. aiohttp's keep-alive timer runs from the
  connection's start and is not reset by partial data, so a slowloris trickle is closed too.
- `body_timeout_s`: a POST body not received in this time is answered 408 and the connection closed
  (after at most `LINGER_S` of reading and dropping what is still coming).
- `max_connections`: at the limit, a new connection closes the oldest one that is not in the middle of a
  request (idle or still sending its headers); when every connection is busy, the new one is answered
  503 with `Retry-After` at once. A request line or header over 8190 bytes, or more than 128 headers,
  is 400 (aiohttp's parser limits), so an unfinished request never grows without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

from aiohttp import web
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from enrollstream.adapters.kafka.records import encode, key_bytes
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.mail.bounce_webhooks import WebhookEndpoint
from enrollstream.adapters.mail.open_tracking import (
    PIXEL_GIF,
    InvalidOpenToken,
    machine_open,
    open_detected_command,
    verify_open_token,
)
from enrollstream.adapters.mail.unsubscribe import (
    InvalidUnsubscribeToken,
    UnsubscribeClaims,
    opt_out_command,
    verify_unsubscribe_token,
)
from enrollstream.domain import aggregate_key
from enrollstream.domain.commands import CommandEnvelope, OpenDetected
from enrollstream.observability import OPEN_PIXEL_LOADS
from enrollstream.runtime.bounce_webhooks import ROUTE as BOUNCE_ROUTE
from enrollstream.runtime.bounce_webhooks import BounceWebhooks

log = logging.getLogger(__name__)

ONE_CLICK_FIELD = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"
MAX_BODY_BYTES = 16 * 1024
# After an answer sent before the whole body arrived (408, 400), read and drop what is still coming for
# at most this long before closing (aiohttp's "lingering close", 10 s by default), so a reset does not
# destroy the answer and a client trickling a body cannot hold the connection past it.
LINGER_S = 1.0
_BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Retry-After: 5\r\nCache-Control: no-store\r\nConnection: close\r\nContent-Length: 29\r\n\r\n"
    b"Too many connections; retry.\n"
)
OPENS_REMEMBERED = 100_000  # published open command ids kept to skip repeats (~100 bytes each)
MAX_PENDING_OPENS = 1_000  # opens being published at once; a load past this is answered, not published
_PIXEL_HEADERS = {
    # Every load should reach us (a cached image is an open we do not see), and nothing leaks onwards.
    "Cache-Control": "no-store, no-cache, must-revalidate, private",
    "Pragma": "no-cache",
    "Expires": "0",
    "Referrer-Policy": "no-referrer",
}


class _Refused(asyncio.Protocol):
    """A connection over the limit while every other one is busy: 503 at once, then close. What the
    client sends meanwhile is read and dropped, so closing does not reset the 503 away."""

    def __init__(self, linger_s: float) -> None:
        self.linger_s = linger_s
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(_BUSY_REPLY)
        asyncio.get_running_loop().call_later(self.linger_s, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        if self.transport is not None:
            self.transport.close()
        return False


def _page(title: str, message: str, form: bool = False, status: int = 200) -> web.Response:
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width">'
        f'<meta name=robots content="noindex"><title>{html.escape(title)}</title></head><body>'
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>"
    )
    if form:
        # Posts to the same URL with the RFC 8058 body, so the page and mail clients share one path.
        body += (
            '<form method="post">'
            f'<input type="hidden" name="{ONE_CLICK_FIELD}" value="{ONE_CLICK_VALUE}">'
            '<button type="submit">Unsubscribe</button></form>'
        )
    body += "</body></html>"
    return web.Response(
        status=status,
        text=body,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


class UnsubscribeServer:
    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        keys: Sequence[bytes],
        *,
        host: str = "127.0.0.1",
        port: int = 8025,
        publish_timeout_s: float = 5.0,
        idle_timeout_s: float = 15.0,
        body_timeout_s: float = 10.0,
        max_connections: int = 256,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        bounce_webhooks: Mapping[str, WebhookEndpoint] | None = None,
        database_url: str | None = None,
    ) -> None:
        if not keys:
            raise ValueError("the unsubscribe role needs a token key (ENROLLSTREAM_UNSUBSCRIBE_KEYS)")
        self.bootstrap = bootstrap
        self.topics = topics
        self.keys = list(keys)
        self.host = host
        self.port = port
        self.publish_timeout_s = publish_timeout_s
        if idle_timeout_s <= 0 or body_timeout_s <= 0 or max_connections < 1:
            raise ValueError("the unsubscribe timeouts must be positive and the connection limit at least 1")
        self.idle_timeout_s = idle_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self.now = now
        self.producer: AIOKafkaProducer | None = None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._busy: set[object] = set()  # connections inside a request
        self._evicted: set[object] = set()  # closed by us, not gone yet
        self.refused = 0  # connections answered 503 at the limit
        self.evicted = 0  # idle connections closed to make room
        self.app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._mark_busy])
        self.app.router.add_get("/unsubscribe/{token}", self._get)
        self.app.router.add_post("/unsubscribe/{token}", self._post)
        self.app.router.add_get("/o/{token}", self._pixel)
        # Only with endpoints configured; they need the delivery ledger (PostgreSQL) to match messages.
        self.bounces: BounceWebhooks | None = None
        if bounce_webhooks:
            if not database_url:
                raise ValueError("bounce webhooks need DATABASE_URL (the delivery ledger)")
            self.bounces = BounceWebhooks(
                bounce_webhooks, database_url, self._publish, now=now, body_timeout_s=body_timeout_s
            )
            self.app.router.add_post(BOUNCE_ROUTE, self.bounces.handle)
        self._opens_published: OrderedDict[str, None] = OrderedDict()  # oldest first, bounded
        self._opens_pending: dict[str, asyncio.Task[None]] = {}
        self.opens_published = 0  # OpenDetected commands this process published

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=int(self.publish_timeout_s * 1000),
        )
        await self.producer.start()
        if self.bounces is not None:
            await self.bounces.start()
        # keepalive_timeout: aiohttp closes a connection still waiting for a complete request this long
        # after it opened or after its last response (partial data does not reset it).
        self._runner = web.AppRunner(
            self.app, access_log=None, keepalive_timeout=self.idle_timeout_s, lingering_time=LINGER_S
        )
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._accept, self.host, self.port, reuse_address=True)
        if self.port == 0:  # the port the OS chose
            self.port = int(self._listener.sockets[0].getsockname()[1])
        log.info("unsubscribe endpoint listening on %s/unsubscribe/<token>", self.base_url)

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()

    def _accept(self) -> asyncio.BaseProtocol:
        """The protocol for a new connection, keeping at most `max_connections` open."""
        assert self._runner is not None and self._runner.server is not None
        server = self._runner.server
        connections = server.connections
        self._evicted.intersection_update(connections)  # forget the ones that are gone
        live = [c for c in connections if c not in self._evicted]
        if len(live) >= self.max_connections:
            idle = [c for c in live if c not in self._busy]  # oldest first
            if not idle:
                self.refused += 1
                return _Refused(linger_s=LINGER_S)
            self._evicted.add(idle[0])
            self.evicted += 1
            idle[0].force_close()
        return server()

    @web.middleware
    async def _mark_busy(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        protocol = request.protocol
        self._busy.add(protocol)
        try:
            return await handler(request)
        finally:
            self._busy.discard(protocol)

    async def stop(self) -> None:
        if self._opens_pending:  # let the opens already answered reach the broker, briefly
            await asyncio.wait(list(self._opens_pending.values()), timeout=self.publish_timeout_s)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.bounces is not None:
            await self.bounces.stop()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
            self.producer = None

    def _claims(self, request: web.Request) -> UnsubscribeClaims | web.Response:
        try:
            return verify_unsubscribe_token(request.match_info["token"], self.keys)
        except InvalidUnsubscribeToken:
            return _page(
                "Invalid unsubscribe link",
                "This unsubscribe link is invalid or has been altered. Use the link from the most "
                "recent message you received, or reply to it and ask to be removed.",
                status=400,
            )

    async def _get(self, request: web.Request) -> web.Response:
        claims = self._claims(request)
        if isinstance(claims, web.Response):
            return claims
        return _page(
            "Unsubscribe",
            "Press the button to stop receiving these messages. Nothing changes until you do.",
            form=True,
        )

    async def _post(self, request: web.Request) -> web.Response:
        claims = self._claims(request)
        if isinstance(claims, web.Response):
            return claims
        try:
            form = await asyncio.wait_for(request.post(), timeout=self.body_timeout_s)
        except TimeoutError:
            response = _page("Request timeout", "The request body did not arrive in time.", status=408)
            response.force_close()
            return response
        if form.get(ONE_CLICK_FIELD) != ONE_CLICK_VALUE:
            return _page(
                "Bad request",
                f"A one-click unsubscribe POST carries the body {ONE_CLICK_FIELD}={ONE_CLICK_VALUE}.",
                status=400,
            )
        command = opt_out_command(claims, issued_at=self.now())
        try:
            await self._publish(command)
        except Exception:
            log.exception("could not publish the opt-out %s", command.command_id)
            return _page(
                "Please try again",
                "We could not record your request just now. Please try again in a few minutes.",
                status=503,
            )
        return _page("Unsubscribed", "You will not receive these messages any more.")

    async def _publish(self, command: CommandEnvelope) -> None:
        producer = self.producer
        if producer is None:
            raise RuntimeError("the unsubscribe server is not started")
        await asyncio.wait_for(
            producer.send_and_wait(
                self.topics.commands,
                encode(command),
                key=key_bytes(aggregate_key(command.account_id, command.contact_id)),
            ),
            timeout=self.publish_timeout_s,
        )

    async def _pixel(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        try:
            if not token.endswith(".gif"):
                raise InvalidOpenToken("not a pixel path")
            claims = verify_open_token(token.removesuffix(".gif"), self.keys)
            now = self.now()
            command = open_detected_command(
                claims,
                issued_at=now,
                machine=machine_open(request.headers.get("User-Agent", ""), claims, now),
            )
        except (InvalidOpenToken, ValidationError):
            OPEN_PIXEL_LOADS.labels("invalid").inc()
            return web.Response(status=404, text="Not found\n", headers={"Cache-Control": "no-store"})
        command_id = command.command_id
        if command_id in self._opens_published or command_id in self._opens_pending:
            OPEN_PIXEL_LOADS.labels("repeat").inc()
        elif len(self._opens_pending) >= MAX_PENDING_OPENS:
            OPEN_PIXEL_LOADS.labels("dropped").inc()  # the next load of this pixel tries again
            log.warning(
                "open tracking: %d publishes pending; %s not published", len(self._opens_pending), command_id
            )
        else:
            self._opens_pending[command_id] = asyncio.create_task(self._publish_open(command))
        return web.Response(body=PIXEL_GIF, content_type="image/gif", headers=_PIXEL_HEADERS)

    async def _publish_open(self, command: OpenDetected) -> None:
        """In the background of the pixel's answer; a failure is logged and counted, never raised."""
        try:
            await self._publish(command)
        except Exception:
            OPEN_PIXEL_LOADS.labels("publish_failed").inc()
            log.exception("open tracking: could not publish %s (the next load retries)", command.command_id)
            return
        finally:
            self._opens_pending.pop(command.command_id, None)
        self.opens_published += 1
        OPEN_PIXEL_LOADS.labels("machine" if command.data.machine else "published").inc()
        self._opens_published[command.command_id] = None
        while len(self._opens_published) > OPENS_REMEMBERED:
            self._opens_published.popitem(last=False)
