"""The Enrollments console: server-rendered pages under /console on the API's application.

Sign-in is the same API key the HTTP API takes, pasted once into a form and kept in a cookie that is
Secure, HttpOnly and SameSite=Strict; every request checks it is still live (a revoked key is signed out
at once) and sees only its account. Every form carries the session's CSRF token (double submit: a random
token in its own strict cookie, echoed in a hidden field) and a POST without it is refused with 403.
Writes publish commands through the API's client and wait a bounded time for the result; reads come from
the read models. Templates are Jinja2 with autoescape on, so every value a user supplied is text.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlencode

import asyncpg
import jinja2
from aiokafka import AIOKafkaProducer
from fastapi import Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from enrollstream.adapters.postgres.api_keys import account_of_key
from enrollstream.adapters.postgres.queries import query
from enrollstream.adapters.postgres.read_side import PAGE_SIZE, campaign_stats_card, contact_why
from enrollstream.api.context import ApiContext
from enrollstream.api.errors import ApiError
from enrollstream.client import CommandTimeout
from enrollstream.console.requests import (
    MAX_GROUP_LENGTH,
    MAX_MESSAGE_LENGTH,
    MAX_MESSAGE_RECIPIENTS,
    AddToGroupRequested,
    MessageRequested,
)
from enrollstream.domain import aggregate_key
from enrollstream.domain.bounds import MAX_ID_LENGTH
from enrollstream.read_models.why import explain
from enrollstream.runtime.as_of import campaign_as_of, contact_as_of

KEY_COOKIE = "enrollstream_key"
CSRF_COOKIE = "enrollstream_csrf"
COOKIE_PATH = "/console"
MAX_KEY_LENGTH = 512
MAX_SEARCH_LENGTH = 200
MAX_ACTOR_LENGTH = 256
MAX_CURSOR_LENGTH = 1024
MAX_SELECTION = PAGE_SIZE  # a batch action acts on rows of one page

# Seed 000's status filter, and the other statuses (the cards link to them). Each group is exactly
# what its card counts (the campaign_stats_cards view), so a card and its filter always agree.
STATUS_GROUPS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "all": ("All", None),
    "active": ("Active", ("pending", "active")),
    "completed": ("Completed", ("completed", "delivered")),
    "stopped": ("Stopped", ("stopped",)),
    "failed": ("Failed", ("failed",)),
    "processing": ("Processing", ("processing",)),
    "queued": ("Queued", ("queued",)),
    "awaiting_trigger": ("Awaiting trigger", ("awaiting_trigger",)),
    "expired": ("Expired", ("expired",)),
    "handed_off": ("Chatbot Handoff", ("handed_off",)),
    "unenrolled": ("Unenrolled", ("unenrolled",)),
}
MAIN_FILTERS = ("all", "active", "completed", "stopped", "failed")  # seed 000's filter, in its order
CARDS = (  # (stats key, label, filter)
    ("total", "Total", "all"),
    ("active", "Active", "active"),
    ("completed", "Completed", "completed"),
    ("stopped", "Stopped", "stopped"),
    ("failed", "Failed", "failed"),
    ("processing", "Processing", "processing"),
    ("queued", "Queued", "queued"),
    ("awaiting_trigger", "Awaiting trigger", "awaiting_trigger"),
    ("expired", "Expired", "expired"),
    ("handed_off", "Chatbot Handoff", "handed_off"),
    ("unenrolled", "Unenrolled", "unenrolled"),
)
STATUS_LABELS = {  # seed 000's words for the lifecycle statuses (docs/statuses.md)
    "pending": "Active (nothing sent yet)",
    "active": "Active",
    "processing": "Processing",
    "completed": "Completed",
    "delivered": "Completed (delivered)",
    "handed_off": "Chatbot Handoff",
    "stopped": "Stopped",
    "failed": "Failed",
    "queued": "Queued",
    "awaiting_trigger": "Awaiting trigger",
    "expired": "Expired",
    "unenrolled": "Unenrolled",
}
TERMINAL = {"delivered", "completed", "stopped", "failed", "expired", "handed_off", "unenrolled"}
ACTIONS = {  # the per-row actions: the command, the confirmation's words
    "stop": ("Stop.v1", "Stop", "No more messages of this campaign will be sent to this contact."),
    "unenroll": (
        "Unenroll.v1",
        "Unenroll",
        "The contact is removed from the campaign for good; a send already in progress still completes.",
    ),
}
BATCH_ACTIONS = {
    "mark_finished": "Mark as finished",
    "add_to_group": "Add to group",
    "send_message": "Send message",
}
ACTOR = "console"


class LoginRequired(Exception):
    def __init__(self, path: str) -> None:
        self.path = path


class CsrfRefused(Exception):
    pass


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files(__package__).joinpath("templates"))),
        autoescape=True,  # every template, whatever its name: user values are always text
        undefined=jinja2.StrictUndefined,
    )
    env.filters["status_label"] = lambda status: STATUS_LABELS.get(status, status)
    env.filters["when"] = lambda v: v.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if v else "—"
    return env


TEMPLATES = _templates()


def render(request: Request, name: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    csrf = request.cookies.get(CSRF_COOKIE) or ""
    new_csrf = None
    if not _valid_token(csrf):
        csrf = new_csrf = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(16)  # only the page's own inline script runs, never an injected one
    html = TEMPLATES.get_template(name).render(
        csrf=csrf, nonce=nonce, root=str(request.scope.get("root_path", "")), **values
    )
    response = HTMLResponse(html, status_code=status_code)
    response.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    if new_csrf is not None:
        _set_cookie(response, CSRF_COOKIE, new_csrf)
    return response


def _valid_token(token: str) -> bool:
    return 20 <= len(token) <= 100 and token.replace("-", "").replace("_", "").isalnum()


def _set_cookie(response: Response, name: str, value: str) -> None:
    # Secure even on http://127.0.0.1: Chromium (and Firefox) treat loopback as a secure context and
    # keep Secure cookies set over it; anywhere else the console must be served over https.
    response.set_cookie(name, value, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict")


def context_of(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(context_of)]


async def signed_in(request: Request, context: Context) -> str:
    """The account of the session's key; a missing, unknown or revoked key goes to the login form."""
    key = request.cookies.get(KEY_COOKIE, "")
    account = None
    if 0 < len(key) <= MAX_KEY_LENGTH:
        account = await account_of_key(context.pool, key)
    if account is None:
        raise LoginRequired(request.url.path)
    return account


Account = Annotated[str, Depends(signed_in)]


async def checked_csrf(request: Request, csrf: Annotated[str, Form(max_length=100)] = "") -> None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not (_valid_token(cookie) and hmac.compare_digest(cookie.encode(), csrf.encode())):
        raise CsrfRefused()


Csrf = Depends(checked_csrf)


# --- the page's state in its URL ------------------------------------------------------------------


def encode_cursor(enrolled_at: datetime, enrollment_id: str) -> str:
    raw = f"{enrolled_at.isoformat()}|{enrollment_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str | None) -> tuple[datetime, str] | None:
    """None for no cursor; a malformed one is a 400 (it came from a link we did not write)."""
    if not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        at, enrollment_id = raw.split("|", 1)
        parsed = datetime.fromisoformat(at)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise StarletteHTTPException(400, "the page link is not valid") from None
    if parsed.tzinfo is None or not enrollment_id:
        raise StarletteHTTPException(400, "the page link is not valid")
    return parsed, enrollment_id


@dataclass(frozen=True)
class Filters:
    status: str = "all"
    step: int | None = None
    q: str = ""
    by: str = ""

    def with_status(self, status: str) -> Filters:
        return replace(self, status=status)

    def params(self, **extra: str) -> str:
        values = {"status": self.status, "step": self.step or "", "q": self.q, "by": self.by, **extra}
        return urlencode({k: v for k, v in values.items() if v not in ("", None, "all")})


def filters_of(
    status: Annotated[str, Query(max_length=40)] = "all",
    step: Annotated[str, Query(max_length=10)] = "",
    q: Annotated[str, Query(max_length=MAX_SEARCH_LENGTH)] = "",
    by: Annotated[str, Query(max_length=MAX_ACTOR_LENGTH)] = "",
) -> Filters:
    step_number = int(step) if step.isdigit() and 0 < int(step) <= 10_000 else None
    return Filters(status if status in STATUS_GROUPS else "all", step_number, q.strip(), by.strip())


PageFilters = Annotated[Filters, Depends(filters_of)]


async def enrollment_rows(
    conn: asyncpg.Connection,
    account: str,
    campaign_id: str,
    filters: Filters,
    after: str | None,
    before: str | None,
) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """One page of rows, the cursor of the next page (None: last) and of the previous one (None: first)."""
    statuses = STATUS_GROUPS[filters.status][1]
    args = (
        account,
        campaign_id,
        None if statuses is None else list(statuses),
        filters.step,
        filters.q or None,
        filters.by or None,
    )
    before_cursor = decode_cursor(before)
    async with conn.transaction():
        await conn.execute(query("force_custom_plans"))
        if before_cursor is not None:
            back = await conn.fetch(query("console_enrollments_before", "console.sql"), *args,
                                    *before_cursor, PAGE_SIZE + 1)  # fmt: skip
            rows = [dict(r) for r in reversed(back[:PAGE_SIZE])]
            has_previous = len(back) > PAGE_SIZE
            has_next = True  # we came back from it
        else:
            after_cursor = decode_cursor(after)
            forward = await conn.fetch(
                query("console_enrollments_after", "console.sql"),
                *args,
                *(after_cursor or (None, None)),
                PAGE_SIZE + 1,
            )
            rows = [dict(r) for r in forward[:PAGE_SIZE]]
            has_next = len(forward) > PAGE_SIZE
            has_previous = after_cursor is not None
    if not rows:
        return rows, None, None
    first, last = rows[0], rows[-1]
    next_cursor = encode_cursor(last["enrolled_at"], last["enrollment_id"]) if has_next else None
    previous_cursor = encode_cursor(first["enrolled_at"], first["enrollment_id"]) if has_previous else None
    return rows, next_cursor, previous_cursor


async def _publish_requests(
    publisher: AIOKafkaProducer,
    context: ApiContext,
    account: str,
    campaign_id: str,
    action: str,
    rows: list[dict[str, Any]],
    group: str,
    text: str,
) -> None:
    """One operator request per contact on the operator-requests topic (console/requests.py)."""
    batch_id = f"console-{uuid.uuid4()}"
    now = datetime.now(UTC)
    for row in rows:
        common: dict[str, Any] = {
            "request_id": f"{batch_id}/{row['contact_id']}",
            "batch_id": batch_id,
            "requested_at": now,
            "requested_by": ACTOR,
            "account_id": account,
            "contact_id": row["contact_id"],
            "campaign_id": campaign_id,
            "enrollment_id": row["enrollment_id"],
        }
        record: AddToGroupRequested | MessageRequested = (
            AddToGroupRequested(**common, group=group.strip())
            if action == "add_to_group"
            else MessageRequested(**common, mobile=row["mobile"], text=text.strip())
        )
        await publisher.send_and_wait(
            context.client.topics.operator_requests,
            record.model_dump_json().encode(),
            key=aggregate_key(account, row["contact_id"]).encode(),
        )


# --- the application ----------------------------------------------------------------------------


def create_console(context: ApiContext | None) -> FastAPI:
    """The console's application, mounted at /console by the API's `create_app`."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.context = context

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        if request.url.path.endswith("/live"):  # a poll: say so, the page's script reloads to the form
            return Response(status_code=401)
        response = RedirectResponse(f"{request.scope.get('root_path', '')}/login", status_code=303)
        response.delete_cookie(KEY_COOKIE, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict")
        return response

    @app.exception_handler(CsrfRefused)
    async def refuse(request: Request, _: Exception) -> Response:
        return render(request, "message.html", 403, title="Refused",
                      message="This form is missing its security token or it has expired. "
                      "Go back, reload the page and try again.")  # fmt: skip

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)  # context.campaign's 404 campaign_not_found, as a page
        return render(request, "message.html", exc.status, title="Not found", message=exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return render(request, "message.html", exc.status_code, title=f"Error {exc.status_code}",
                      message=str(exc.detail))  # fmt: skip

    @app.get("/")
    async def home(request: Request) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/campaigns", status_code=303)

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request) -> Response:
        return render(request, "login.html", error="")

    @app.post("/login", response_class=HTMLResponse, dependencies=[Csrf])
    async def login(
        request: Request, context: Context, key: Annotated[str, Form(max_length=MAX_KEY_LENGTH)] = ""
    ) -> Response:
        account = await account_of_key(context.pool, key.strip()) if key.strip() else None
        if account is None:
            return render(request, "login.html", 401, error="That key is unknown or revoked.")
        response = RedirectResponse(f"{request.scope.get('root_path', '')}/campaigns", status_code=303)
        _set_cookie(response, KEY_COOKIE, key.strip())
        _set_cookie(response, CSRF_COOKIE, secrets.token_urlsafe(32))  # a new session, a new token
        return response

    @app.post("/logout", dependencies=[Csrf])
    async def logout(request: Request) -> Response:
        response = RedirectResponse(f"{request.scope.get('root_path', '')}/login", status_code=303)
        for name in (KEY_COOKIE, CSRF_COOKIE):
            response.delete_cookie(name, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict")
        return response

    @app.get("/campaigns", response_class=HTMLResponse)
    async def campaigns(request: Request, context: Context, account: Account) -> Response:
        await context.campaigns.catch_up()
        return render(request, "campaigns.html", account=account,
                      campaigns=context.campaigns.of_account(account))  # fmt: skip

    async def page_values(
        context: ApiContext,
        account: str,
        campaign_id: str,
        filters: Filters,
        after: str | None,
        before: str | None,
    ) -> dict[str, Any]:
        campaign = await context.campaign(account, campaign_id)
        async with context.pool.acquire() as conn:
            stats = await campaign_stats_card(conn, account, campaign_id)
            rows, next_cursor, previous_cursor = await enrollment_rows(
                conn, account, campaign_id, filters, after, before
            )
        return {
            "account": account,
            "campaign": campaign,
            "stats": stats,
            "cards": CARDS,
            "rows": rows,
            "filters": filters,
            "groups": STATUS_GROUPS,
            "main_filters": MAIN_FILTERS,
            "next_cursor": next_cursor,
            "previous_cursor": previous_cursor,
            "terminal": TERMINAL,
            "batch_actions": BATCH_ACTIONS,
            "max_recipients": MAX_MESSAGE_RECIPIENTS,
            "here": filters.params(
                **({"after": after} if after else {}), **({"before": before} if before else {})
            ),
            "steps": range(1, len(campaign.steps) + 1),
        }

    @app.get("/campaigns/{campaign_id}/enrollments", response_class=HTMLResponse)
    async def enrollments(
        request: Request,
        context: Context,
        account: Account,
        campaign_id: str,
        filters: PageFilters,
        after: Annotated[str | None, Query(max_length=MAX_CURSOR_LENGTH)] = None,
        before: Annotated[str | None, Query(max_length=MAX_CURSOR_LENGTH)] = None,
        notice: Annotated[str, Query(max_length=300)] = "",
    ) -> Response:
        values = await page_values(context, account, campaign_id, filters, after, before)
        return render(request, "enrollments.html", notice=notice, **values)

    @app.get("/campaigns/{campaign_id}/enrollments/live", response_class=HTMLResponse)
    async def live(
        request: Request,
        context: Context,
        account: Account,
        campaign_id: str,
        filters: PageFilters,
        after: Annotated[str | None, Query(max_length=MAX_CURSOR_LENGTH)] = None,
        before: Annotated[str | None, Query(max_length=MAX_CURSOR_LENGTH)] = None,
    ) -> Response:
        """The cards and the table's rows alone: the page polls this every 2 s while it is open."""
        values = await page_values(context, account, campaign_id, filters, after, before)
        return render(request, "live.html", **values)

    async def enrollment_of(
        context: ApiContext, account: str, campaign_id: str, enrollment_ids: list[str]
    ) -> list[dict[str, Any]]:
        await context.campaign(account, campaign_id)  # 404 for another account's campaign
        async with context.pool.acquire() as conn:
            rows = await conn.fetch(query("console_enrollments_by_id", "console.sql"), account, campaign_id,
                                    enrollment_ids)  # fmt: skip
        return [dict(r) for r in rows]

    async def action_on(
        context: ApiContext, account: str, campaign_id: str, enrollment_id: str, action: str
    ) -> tuple[dict[str, Any], tuple[str, str, str]]:
        """The enrollment an action names and the action (command type, label, consequence); 404 when
        either is not there (another account's or campaign's enrollment included)."""
        if action not in ACTIONS:
            raise StarletteHTTPException(404, "no such action")
        rows = await enrollment_of(context, account, campaign_id, [enrollment_id])
        if not rows:
            raise StarletteHTTPException(404, "no such enrollment in this campaign")
        return rows[0], ACTIONS[action]

    @app.get("/campaigns/{campaign_id}/enrollments/{enrollment_id}/{action}", response_class=HTMLResponse)
    async def confirm(
        request: Request,
        context: Context,
        account: Account,
        campaign_id: str,
        enrollment_id: str,
        action: str,
        back: Annotated[str, Query(max_length=2000)] = "",
    ) -> Response:
        row, (_, label, consequence) = await action_on(context, account, campaign_id, enrollment_id, action)
        return render(request, "confirm.html", account=account, campaign_id=campaign_id, row=row,
                      action=action, label=label, consequence=consequence, back=back)  # fmt: skip

    async def send(context: ApiContext, account: str, command_type: str, row: dict[str, Any]) -> str:
        """Publish one operator command and wait (bounded) for its result: a line for the notice."""
        name = row["contact_name"] or row["contact_id"]
        data = {"contact_id": row["contact_id"], "enrollment_id": row["enrollment_id"], "note": "console"}
        command = context.client.envelope(command_type, account, data, actor=ACTOR)
        try:
            result = await context.client.send(command, timeout=context.result_timeout_s)
        except CommandTimeout:
            return f"{name}: sent, the result is not in yet (the page will show it)"
        if result.status == "accepted":
            return f"{name}: done"
        code = f" ({result.code})" if result.code else ""
        return f"{name}: {result.status}{code} {result.message}".strip()

    def back_to(request: Request, campaign_id: str, back: str, notice: str) -> RedirectResponse:
        # `back` is the page's own query string (filters, cursor); only that, never a URL.
        query_string = back if back and "://" not in back and not back.startswith("/") else ""
        joined = "&".join(p for p in (query_string, urlencode({"notice": notice[:300]})) if p)
        root = request.scope.get("root_path", "")
        return RedirectResponse(f"{root}/campaigns/{campaign_id}/enrollments?{joined}", status_code=303)

    @app.post("/campaigns/{campaign_id}/enrollments/{enrollment_id}/{action}", dependencies=[Csrf])
    async def act(
        request: Request,
        context: Context,
        account: Account,
        campaign_id: str,
        enrollment_id: str,
        action: str,
        back: Annotated[str, Form(max_length=2000)] = "",
    ) -> Response:
        row, (command_type, label, _) = await action_on(context, account, campaign_id, enrollment_id, action)
        line = await send(context, account, command_type, row)
        return back_to(request, campaign_id, back, f"{label}: {line}")

    @app.post("/campaigns/{campaign_id}/batch", response_class=HTMLResponse, dependencies=[Csrf])
    async def batch(
        request: Request,
        context: Context,
        account: Account,
        campaign_id: str,
        action: Annotated[str, Form(max_length=40)] = "",
        enrollment_id: Annotated[list[str] | None, Form()] = None,
        back: Annotated[str, Form(max_length=2000)] = "",
        confirmed: Annotated[str, Form(max_length=10)] = "",
        group: Annotated[str, Form(max_length=MAX_GROUP_LENGTH)] = "",
        text: Annotated[str, Form(max_length=MAX_MESSAGE_LENGTH)] = "",
    ) -> Response:
        """A batch action on the selected rows: first a confirmation page (with the group or the
        message to fill in), then, confirmed, one command or one operator request per contact."""
        if action not in BATCH_ACTIONS:
            raise StarletteHTTPException(400, "choose a batch action")
        ids = list(dict.fromkeys(i for i in (enrollment_id or []) if 0 < len(i) <= 512))
        limit = MAX_MESSAGE_RECIPIENTS if action == "send_message" else MAX_SELECTION
        problem = ""
        if not ids:
            problem = "Select at least one contact first."
        elif len(ids) > limit:
            problem = (
                f"{BATCH_ACTIONS[action]} works on up to {limit} contacts at a time; {len(ids)} are selected."
            )
        rows = await enrollment_of(context, account, campaign_id, ids) if ids and not problem else []
        if confirmed == "yes" and not problem:
            if action == "add_to_group" and not group.strip():
                problem = "Name the group."
            if action == "send_message" and not text.strip():
                problem = "Write the message."
        if confirmed != "yes" or problem:
            return render(request, "batch.html", 400 if problem else 200, account=account,
                          campaign_id=campaign_id, action=action, label=BATCH_ACTIONS[action], rows=rows,
                          back=back, problem=problem, group=group, text=text,
                          max_recipients=MAX_MESSAGE_RECIPIENTS)  # fmt: skip
        if action == "mark_finished":
            lines = [await send(context, account, "MarkFinished.v1", row) for row in rows]
            return back_to(request, campaign_id, back, f"Mark as finished: {'; '.join(lines)}")
        # A producer for this action alone: batch actions are rare, and the server owns no shutdown hook
        # for the console to close a long-lived one in.
        publisher = AIOKafkaProducer(bootstrap_servers=context.client.bootstrap, acks="all",
                                     enable_idempotence=True)  # fmt: skip
        await publisher.start()
        try:
            await _publish_requests(publisher, context, account, campaign_id, action, rows, group, text)
        finally:
            await publisher.stop()
        what = f"added to group {group.strip()!r}" if action == "add_to_group" else "message requested"
        notice = f"{BATCH_ACTIONS[action]}: {len(rows)} contacts {what} (sent to the downstream system)"
        return back_to(request, campaign_id, back, notice)

    @app.get("/campaigns/{campaign_id}/as-of", response_class=HTMLResponse)
    async def as_of(
        request: Request,
        context: Context,
        account: Account,
        campaign_id: str,
        at: Annotated[str, Query(max_length=40)] = "",
        contact: Annotated[str, Query(max_length=MAX_ID_LENGTH)] = "",
    ) -> Response:
        """Read-only: the campaign's rows and cards (or one contact's rows) as they were at `at`, rebuilt
        from the events topic (docs/time-travel.md). `at` without a zone is UTC."""
        campaign = await context.campaign(account, campaign_id)
        values: dict[str, Any] = {"account": account, "campaign": campaign, "at": at, "contact": contact,
                                  "found": None, "problem": "", "cards": CARDS}  # fmt: skip
        if at:
            try:
                when = datetime.fromisoformat(at.strip().replace("Z", "+00:00"))
                contact_id = contact.strip() or None
                bootstrap, events_topic = context.client.bootstrap, context.client.topics.events
                if contact_id is not None:
                    values["found"] = await contact_as_of(
                        bootstrap, events_topic, context.pool, account, contact_id, when, campaign_id
                    )
                else:
                    assert context.database_url is not None
                    values["found"] = await campaign_as_of(
                        bootstrap,
                        events_topic,
                        context.database_url,
                        account,
                        campaign_id,
                        when,
                        PAGE_SIZE * 5,
                    )
            except ValueError as exc:  # not a time, or a time or id out of bounds (AsOfInputError)
                values["problem"] = f"{exc}"
        return render(request, "as_of.html", 400 if values["problem"] else 200, **values)

    @app.get("/campaigns/{campaign_id}/contacts/{contact_id}", response_class=HTMLResponse)
    async def contact(
        request: Request, context: Context, account: Account, campaign_id: str, contact_id: str
    ) -> Response:
        campaign = await context.campaign(account, campaign_id)
        async with context.pool.acquire() as conn:
            rows = await conn.fetch(query("console_contact_enrollments", "console.sql"), account, contact_id,
                                    campaign_id)  # fmt: skip
            why = await contact_why(conn, account, contact_id, campaign_id)
        if not rows and not why:
            raise StarletteHTTPException(404, "no such contact in this campaign")
        timeline = [{**row, "sentence": words} for row, words in zip(why, explain(why), strict=True)]
        return render(request, "contact.html", account=account, campaign=campaign, contact_id=contact_id,
                      enrollments=[dict(r) for r in rows], timeline=timeline, terminal=TERMINAL)  # fmt: skip

    return app
