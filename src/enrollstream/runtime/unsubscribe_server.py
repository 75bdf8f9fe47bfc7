"""One-click unsubscribe endpoint (RFC 8058), the `unsubscribe` role.

    POST /unsubscribe/<token>   body List-Unsubscribe=One-Click  -> OptOut on the commands topic, 200
    GET  /unsubscribe/<token>                                    -> a confirmation page with a form, 200

GET never unsubscribes: mail scanners and link previewers fetch every URL in a message. A token that is
malformed or not signed by one of our keys is 400; a failure to publish the command is 503 (the mail
client or the person may try again: the command id is deterministic, so a repeat is one opt-out).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from aiohttp import web
from aiokafka import AIOKafkaProducer

from enrollstream.adapters.kafka.records import encode, key_bytes
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.mail.unsubscribe import (
    InvalidUnsubscribeToken,
    UnsubscribeClaims,
    opt_out_command,
    verify_unsubscribe_token,
)
from enrollstream.domain import aggregate_key

log = logging.getLogger(__name__)

ONE_CLICK_FIELD = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"
MAX_BODY_BYTES = 16 * 1024


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
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not keys:
            raise ValueError("the unsubscribe role needs a token key (ENROLLSTREAM_UNSUBSCRIBE_KEYS)")
        self.bootstrap = bootstrap
        self.topics = topics
        self.keys = list(keys)
        self.host = host
        self.port = port
        self.publish_timeout_s = publish_timeout_s
        self.now = now
        self.producer: AIOKafkaProducer | None = None
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        self.app.router.add_get("/unsubscribe/{token}", self._get)
        self.app.router.add_post("/unsubscribe/{token}", self._post)

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
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # the port the OS chose
            self.port = int(self._runner.addresses[0][1])
        log.info("unsubscribe endpoint listening on %s/unsubscribe/<token>", self.base_url)

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
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
        form = await request.post()
        if form.get(ONE_CLICK_FIELD) != ONE_CLICK_VALUE:
            return _page(
                "Bad request",
                f"A one-click unsubscribe POST carries the body {ONE_CLICK_FIELD}={ONE_CLICK_VALUE}.",
                status=400,
            )
        command = opt_out_command(claims, issued_at=self.now())
        try:
            producer = self.producer
            if producer is None:
                raise RuntimeError("the unsubscribe server is not started")
            await asyncio.wait_for(
                producer.send_and_wait(
                    self.topics.commands,
                    encode(command),
                    key=key_bytes(aggregate_key(claims.account_id, claims.contact_id)),
                ),
                timeout=self.publish_timeout_s,
            )
        except Exception:
            log.exception("could not publish the opt-out %s", command.command_id)
            return _page(
                "Please try again",
                "We could not record your request just now. Please try again in a few minutes.",
                status=503,
            )
        return _page("Unsubscribed", "You will not receive these messages any more.")
