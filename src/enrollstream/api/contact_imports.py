"""Contact imports over HTTP (seed 001's `contact_import_id`), so a bulk enroll needs no Kafka producer:
`PUT /contact_imports/{contact_import_id}` publishes the import to the account's compacted contact-imports
topic, as upstream systems do directly. Contacts are listed by id (their facts from the directory, see
`PUT /contacts/{id}`) or with their facts inline. An MX answer is never taken from a caller: the decider
looks it up (issue 12, item 9).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from enrollstream.api.context import Account, Context
from enrollstream.api.enrollments import Body
from enrollstream.api.errors import error_responses
from enrollstream.domain import ContactImport
from enrollstream.domain.bounds import ID_PATTERN, MAX_ID_LENGTH, Id
from enrollstream.domain.campaign import ContactFacts
from enrollstream.runtime.contact_imports import publish_contact_import

router = APIRouter(tags=["contacts"])

MAX_IMPORT_CONTACTS = 5000  # one import is one record of at most 8 MiB (runtime/contact_imports.py)

ImportId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]


class ImportedContact(Body):
    contact_id: Id
    contact: ContactFacts | None = None  # None: the directory's profile when it is enrolled


class ContactImportBody(Body):
    contacts: list[ImportedContact] = Field(min_length=1, max_length=MAX_IMPORT_CONTACTS)


class ContactImportPut(BaseModel):
    contact_import_id: str
    contacts: int


@router.put("/contact_imports/{contact_import_id}", responses=error_responses(401, 422))
async def put_contact_import(
    contact_import_id: ImportId, body: ContactImportBody, context: Context, account: Account
) -> ContactImportPut:
    """Publish the import under this account (an import is one list: publish corrections under a new id,
    since a bulk enroll already fanned out keeps the list it saw)."""
    contact_import = ContactImport.model_validate(
        {
            "contact_import_id": contact_import_id,
            "account_id": account,
            "contacts": [c.model_dump(mode="json", exclude_none=True) for c in body.contacts],
        }
    )
    await publish_contact_import(
        context.client.bootstrap, context.client.topics.contact_imports, contact_import
    )
    return ContactImportPut(contact_import_id=contact_import_id, contacts=len(contact_import.contacts))
