"""The HTTP API of seed 001 (docs/api.md): `create_app` builds it, `ApiServer` runs it (the `api` role)."""

from enrollstream.api.app import create_app, render_openapi
from enrollstream.api.context import ApiContext
from enrollstream.api.server import ApiServer

__all__ = ["ApiContext", "ApiServer", "create_app", "render_openapi"]
