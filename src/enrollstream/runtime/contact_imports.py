"""The contact-imports table every decider holds: the compacted contact-imports topic, read and followed.

Upstream publishes a contact import (seed 001 `contact_import_id`: the contacts with their facts) before
it sends a BulkEnroll that names it without inline contacts. Like the campaign catalog, `catch_up()` reads
to the topic's current end before a batch is decided, so an import published before the BulkEnroll is
known, and one that is not is `contact_import_not_found`, deterministically.
"""

from __future__ import annotations

import contextlib
import logging

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from enrollstream.adapters.kafka.compacted_table import CompactedTable
from enrollstream.adapters.kafka.records import encode
from enrollstream.domain import ContactImport

log = logging.getLogger(__name__)

# One import is one record; the topic and the publisher allow records this large (the broker default is
# about 1 MB, some 5,000 contacts with their facts).
MAX_IMPORT_BYTES = 8 * 1024 * 1024


def import_key(account_id: str, contact_import_id: str) -> str:
    """Imports are per account: another account's import id is not found."""
    return f"{account_id}/{contact_import_id}"


class ContactImportCatalog(CompactedTable):
    """Latest import per (account, import id); a tombstone (null value) removes one."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(
            bootstrap, topic, max_partition_fetch_bytes=MAX_IMPORT_BYTES, fetch_max_bytes=MAX_IMPORT_BYTES * 2
        )
        self._imports: dict[str, ContactImport] = {}

    def get(self, account_id: str, contact_import_id: str) -> ContactImport | None:
        return self._imports.get(import_key(account_id, contact_import_id))

    def __len__(self) -> int:
        return len(self._imports)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            if key is not None:
                self._imports.pop(key.decode(), None)
            return
        try:
            contact_import = ContactImport.model_validate_json(value)
        except ValidationError:
            log.warning("ignoring an invalid contact import on the contact-imports topic (key %r)", key)
            return
        self._imports[import_key(contact_import.account_id, contact_import.contact_import_id)] = (
            contact_import
        )


async def publish_contact_import(bootstrap: str, topic: str, contact_import: ContactImport) -> None:
    """Upsert a contact import (keyed by account and id, so compaction keeps the latest).

    Treat a published import as immutable: a BulkEnroll redelivered after the import changed fans out the
    new contact list under the old request. Publish corrections under a new import id.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, max_request_size=MAX_IMPORT_BYTES
    )
    await producer.start()
    try:
        key = import_key(contact_import.account_id, contact_import.contact_import_id)
        await producer.send_and_wait(topic, encode(contact_import), key=key.encode(), partition=0)
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
