"""The `api` role: the FastAPI application on uvicorn, inside the worker or alone (`enrollstream api`).

The listening socket is bound in `start()`, so port 0 picks a free port and `port` says which before the
first request. uvicorn's own signal handling is off: the worker (or the CLI) owns SIGTERM and stops the
server through `run(stop)`, after which in-flight requests finish within uvicorn's graceful timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import asyncpg
import uvicorn

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.api.app import create_app
from enrollstream.api.context import ApiContext
from enrollstream.client import EnrollstreamClient
from enrollstream.runtime.campaigns import CampaignCatalog

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:  # the worker handles signals
        yield


class ApiServer:
    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        database_url: str,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        result_timeout_s: float = 5.0,
        pool_size: int = 10,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.database_url = database_url
        self.host = host
        self.port = port
        self.result_timeout_s = result_timeout_s
        self.pool_size = pool_size
        self._socket: socket.socket | None = None
        self._context: ApiContext | None = None
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=self.pool_size)
        catalog = CampaignCatalog(self.bootstrap, self.topics.campaigns)
        client = EnrollstreamClient(self.bootstrap, self.topics.prefix, actor="api")
        try:
            await catalog.start()
            await client.start()
        except BaseException:
            await catalog.stop()
            await pool.close()
            raise
        self._context = ApiContext(pool, client, catalog, self.result_timeout_s, self.database_url)
        self._socket = socket.create_server((self.host, self.port), reuse_port=False)
        self._socket.setblocking(False)
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            create_app(self._context),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            timeout_keep_alive=15,
            limit_concurrency=512,
        )
        self._server = _Server(config)
        log.info("HTTP API on %s", self.url, extra={"port": self.port})

    async def run(self, stop: asyncio.Event) -> None:
        server, sock = self._server, self._socket
        assert server is not None and sock is not None, "start() first"
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        stopping.cancel()
        await serving  # re-raises what made the server fail, if anything

    async def stop(self) -> None:
        context, self._context = self._context, None
        if context is not None:
            with contextlib.suppress(Exception):
                await context.client.stop()
            await context.campaigns.stop()
            await context.pool.close()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
