"""What the API's routes work with, opened once per server: the read models' pool, the commands client,
the campaign catalog. Routes take it (and the caller's account) as FastAPI dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from enrollstream.adapters.postgres.api_keys import account_of_key
from enrollstream.api.errors import campaign_not_found, unauthorized
from enrollstream.client import EnrollstreamClient
from enrollstream.domain import CampaignDefinition
from enrollstream.runtime.campaigns import CampaignCatalog


@dataclass
class ApiContext:
    pool: asyncpg.Pool
    client: EnrollstreamClient  # publishes commands, follows their results
    campaigns: CampaignCatalog
    # How long a write waits for its command's result before answering 202 with a Location to poll.
    result_timeout_s: float = 5.0
    # The read models' database, for what needs a connection of its own (as-of's rebuilt schema).
    database_url: str | None = None

    async def campaign(self, account_id: str, campaign_id: str) -> CampaignDefinition:
        """The account's campaign, or 404 `campaign_not_found` (also for another account's)."""
        await self.campaigns.catch_up()  # one published just before this request is known
        campaign = self.campaigns.get(account_id, campaign_id)
        if campaign is None:
            raise campaign_not_found(campaign_id)
        return campaign


def api_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(api_context)]

_bearer = HTTPBearer(auto_error=False, description="an API key: `enrollstream api-key create --account ...`")


async def current_account(
    context: Context, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The account of the request's Bearer key; 401 `unauthorized` without a live one."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized()
    account = await account_of_key(context.pool, credentials.credentials)
    if account is None:
        raise unauthorized("the API key is unknown or revoked")
    return account


Account = Annotated[str, Depends(current_account)]
