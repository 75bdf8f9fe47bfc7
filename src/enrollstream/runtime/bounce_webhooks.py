"""Bounce and complaint callbacks from mail providers, served by the `unsubscribe` role's HTTP server
(docs/delivery.md "Bounce webhooks"):

    POST /webhooks/bounces/<endpoint>   -> BounceDetected (and OptOut for a complaint) on the commands topic

Per request, in this order, each step answering 4xx with a coded reason (`adapters/mail/bounce_webhooks.py
Reason`) and counting it in `enrollstream_bounce_webhooks{format,result}` when it fails:
the endpoint is one of ENROLLSTREAM_BOUNCE_WEBHOOKS (404); the request carries credentials at all (401,
before the body is read); the body arrives within the body timeout and `MAX_BODY_BYTES` (408, 413); the
credentials are one of the endpoint's secrets or a signature of the body (403); the body is the endpoint's
format (400, 422); the message it names is in the delivery ledger *of the endpoint's account* (422
`unmatched`); then the commands are published and acknowledged before the 200, so a failed publish (503)
is retried by the provider, and their deterministic ids make any repeat one effect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

import asyncpg
from aiohttp import web

from enrollstream.adapters.mail.bounce_webhooks import (
    MAX_BODY_BYTES,
    BounceNotice,
    CallbackRejected,
    MatchedMessage,
    Reason,
    WebhookEndpoint,
    authenticate,
    bounce_commands,
    has_credentials,
    parse_callback,
)
from enrollstream.adapters.postgres.queries import query
from enrollstream.domain.commands import CommandEnvelope
from enrollstream.observability import BOUNCE_WEBHOOKS

log = logging.getLogger(__name__)

ROUTE = "/webhooks/bounces/{endpoint}"


def _answer(status: int, outcome: str, reason: str = "", detail: str = "") -> web.Response:
    body: dict[str, str] = {"status": outcome}
    if reason:
        body["reason"] = reason
    if detail:
        body["detail"] = detail
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


class BounceWebhooks:
    """The endpoint's handler; `start` opens a small PostgreSQL pool for the ledger lookups."""

    def __init__(
        self,
        endpoints: Mapping[str, WebhookEndpoint],
        database_url: str,
        publish: Callable[[CommandEnvelope], Awaitable[None]],
        *,
        now: Callable[[], datetime],
        body_timeout_s: float = 10.0,
    ) -> None:
        self.endpoints = dict(endpoints)
        self.database_url = database_url
        self.publish = publish
        self.now = now
        self.body_timeout_s = body_timeout_s
        self._pool: asyncpg.Pool | None = None
        self.accepted = 0  # callbacks whose commands were published

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self.database_url, min_size=0, max_size=2)

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def handle(self, request: web.Request) -> web.Response:
        endpoint = self.endpoints.get(request.match_info["endpoint"])
        fmt = endpoint.format if endpoint is not None else "unknown"
        try:
            if endpoint is None:
                raise CallbackRejected(Reason.UNKNOWN_ENDPOINT, "no such bounce webhook")
            return await self._handle(endpoint, request)
        except CallbackRejected as exc:
            BOUNCE_WEBHOOKS.labels(fmt, exc.reason.value).inc()
            log.warning("bounce webhook %s refused: %s", fmt, exc)
            response = _answer(exc.status, "rejected", exc.reason.value, exc.detail)
            if exc.reason in (Reason.BODY_TOO_LARGE, Reason.BODY_TIMEOUT):
                response.force_close()  # the rest of the body is not read
            return response
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            BOUNCE_WEBHOOKS.labels(fmt, "unavailable").inc()
            log.warning("bounce webhook %s: delivery ledger unavailable: %s", fmt, exc)
            return _answer(503, "retry", "unavailable", "try again later")
        except Exception:  # never crash the server; the provider retries a 5xx
            BOUNCE_WEBHOOKS.labels(fmt, "error").inc()
            log.exception("bounce webhook %s failed", fmt)
            return _answer(500, "retry", "error", "try again later")

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise CallbackRejected(Reason.BODY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")

        async def read() -> bytes:
            chunks: list[bytes] = []
            size = 0
            while chunk := await request.content.read(MAX_BODY_BYTES + 1 - size):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise CallbackRejected(Reason.BODY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(read(), timeout=self.body_timeout_s)
        except TimeoutError:
            raise CallbackRejected(Reason.BODY_TIMEOUT, "the body did not arrive in time") from None

    async def _handle(self, endpoint: WebhookEndpoint, request: web.Request) -> web.Response:
        if not has_credentials(request.headers):
            raise CallbackRejected(Reason.UNAUTHORIZED, "no Authorization or signature header")
        body = await self._read_body(request)
        now = self.now()
        authenticate(endpoint, request.headers, body, now)
        notice = parse_callback(endpoint, body, request.content_type)
        if notice is None:
            BOUNCE_WEBHOOKS.labels(endpoint.format, "ignored").inc()
            return _answer(200, "ignored", detail="not a bounce or complaint")
        message = await self._match(endpoint, notice)
        commands = bounce_commands(notice, message, now, provider=endpoint.format)
        try:
            for command in commands:  # in order: the bounce, then a complaint's opt-out
                await self.publish(command)
        except Exception:
            BOUNCE_WEBHOOKS.labels(endpoint.format, "publish_failed").inc()
            log.exception("bounce webhook: could not publish %s", [c.command_id for c in commands])
            return _answer(503, "retry", "publish_failed", "try again later")
        self.accepted += 1
        BOUNCE_WEBHOOKS.labels(endpoint.format, "accepted").inc()
        log.info("bounce webhook %s: %s for enrollment %s", endpoint.name, notice.kind, message.enrollment_id)
        return _answer(200, "accepted", detail=", ".join(c.command_id for c in commands))

    async def _match(self, endpoint: WebhookEndpoint, notice: BounceNotice) -> MatchedMessage:
        """The ledger row the notice names, only ever among the endpoint's account's messages."""
        pool = self._pool
        assert pool is not None, "start() the bounce webhooks first"
        row = None
        if notice.message_id_header is not None:
            row = await pool.fetchrow(
                query("bounce_by_message_id", "ledger.sql"), endpoint.account_id, notice.message_id_header
            )
        elif notice.recipient is not None:  # a Message-ID not of this account is never guessed around
            row = await pool.fetchrow(
                query("bounce_by_recipient", "ledger.sql"), endpoint.account_id, notice.recipient
            )
        if row is None:
            named = notice.message_id_header or notice.recipient or "nothing"
            raise CallbackRejected(Reason.UNMATCHED, f"no message of this account matches {named}")
        return MatchedMessage(
            account_id=row["account_id"],
            contact_id=row["contact_id"],
            enrollment_id=row["enrollment_id"],
            step_index=row["step_index"],
            message_id=row["message_id"],
        )
