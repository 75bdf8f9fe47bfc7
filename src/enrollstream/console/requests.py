"""Operator requests: the console's batch actions that are not enrollment decisions (seed 003's "add to
group" and "send a message to up to 10 contacts"). Groups and one-off messages live in the systems that
own contacts and messaging, not in the enrollment domain, so the console publishes one record per
contact on the `operator-requests` topic (keyed account_id/contact_id, like commands) for a downstream
consumer to carry out, and says so on the page. Nothing in enrollstream acts on them (docs/console.md).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

MAX_MESSAGE_RECIPIENTS = 10  # seed 003: "send a text message directly to up to 10 contacts"
MAX_GROUP_LENGTH = 200
MAX_MESSAGE_LENGTH = 1600  # ten SMS segments


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str  # one per contact and action: `<batch id>/<contact_id>`; consumers dedupe on it
    batch_id: str  # the console action that produced it (one per submitted form)
    version: Literal[1] = 1
    requested_at: AwareDatetime
    requested_by: str  # "console" and the key's account: who pressed the button
    account_id: str
    contact_id: str
    campaign_id: str  # the Enrollments page it was chosen on
    enrollment_id: str


class AddToGroupRequested(_Request):
    type: Literal["contact.add_to_group_requested"] = "contact.add_to_group_requested"
    group: str = Field(min_length=1, max_length=MAX_GROUP_LENGTH)


class MessageRequested(_Request):
    type: Literal["contact.message_requested"] = "contact.message_requested"
    # Each contact receives the same text individually (seed 003); where to (mobile) is the contact's.
    mobile: str | None
    text: str = Field(min_length=1, max_length=MAX_MESSAGE_LENGTH)


OperatorRequest = Annotated[AddToGroupRequested | MessageRequested, Field(discriminator="type")]
