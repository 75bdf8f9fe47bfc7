"""The FastAPI application: routes, the error shape, the OpenAPI document.

FastAPI rather than Litestar (docs/architecture.md "HTTP API"): our contracts are pydantic v2 models
already, FastAPI validates bodies and writes OpenAPI 3.1 from them with no adapter, and it is what most
teams adopting a Python service already know.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from enrollstream import __version__
from enrollstream.api import (
    as_of,
    campaigns,
    commands,
    contact_imports,
    contacts,
    enrollments,
    operations,
    stages,
)
from enrollstream.api.context import ApiContext
from enrollstream.api.errors import install_error_handlers

TITLE = "enrollstream"
DESCRIPTION = (
    "Enrollments of contacts in drip campaigns (seed 001). Every write publishes a command and answers "
    "with its result; every read comes from the read models. Authorization: Bearer <API key>."
)


def create_app(context: ApiContext | None = None) -> FastAPI:
    """The application; `context` is set by the server that runs it (None: only for the OpenAPI document)."""
    app = FastAPI(title=TITLE, version=__version__, description=DESCRIPTION)
    app.state.context = context
    install_error_handlers(app)
    commands.install_pending_handler(app)
    app.include_router(campaigns.router)
    app.include_router(enrollments.router)
    app.include_router(operations.router)
    app.include_router(contacts.router)
    app.include_router(contact_imports.router)
    app.include_router(stages.router)
    app.include_router(commands.router)
    app.include_router(as_of.router)
    from enrollstream.console.app import create_console  # here: the console imports the API's context

    app.mount("/console", create_console(context))  # the Enrollments console (docs/console.md)
    return app


def openapi_document() -> dict[str, Any]:
    return create_app().openapi()


def render_openapi() -> str:
    """schemas/openapi.json, as committed and drift-checked (schemas_gen)."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
