"""Campaign routes: the account's campaign list (the console's first page) and one campaign."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from enrollstream.api.context import Account, Context
from enrollstream.api.errors import error_responses
from enrollstream.domain import CampaignDefinition

router = APIRouter(tags=["campaigns"])


class CampaignSummary(BaseModel):
    id: str
    name: str
    status: str  # active, paused, archived
    kind: str
    channels: list[str]  # each step's channel, in order
    step_count: int
    version: int
    outreach_id: str | None
    verify_email_mx: bool


class CampaignList(BaseModel):
    campaigns: list[CampaignSummary]


def summary(campaign: CampaignDefinition) -> CampaignSummary:
    return CampaignSummary(
        id=campaign.campaign_id,
        name=campaign.name,
        status=campaign.status.value,
        kind=campaign.kind.value,
        channels=[step.channel.value for step in campaign.steps],
        step_count=len(campaign.steps),
        version=campaign.version,
        outreach_id=campaign.outreach_id,
        verify_email_mx=campaign.verify_email_mx,
    )


@router.get("/campaigns", responses=error_responses(401))
async def list_campaigns(context: Context, account: Account) -> CampaignList:
    """The account's campaigns, by id."""
    await context.campaigns.catch_up()
    return CampaignList(campaigns=[summary(c) for c in context.campaigns.of_account(account)])


@router.get("/campaigns/{campaign_id}", responses=error_responses(401, 404))
async def get_campaign(campaign_id: str, context: Context, account: Account) -> CampaignSummary:
    return summary(await context.campaign(account, campaign_id))
