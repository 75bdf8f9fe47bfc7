"""Deterministic identifiers (sha256; uuid is forbidden in the domain), formatted like UUIDs so
Postgres can store them in uuid columns."""

from __future__ import annotations

import hashlib

# The RFC 4122 variant digit for each hex digit of the digest: 10xx in binary.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def stable_id(*parts: str | int) -> str:
    # Several per decided command (events, public events): kept to one join and one lookup.
    h = hashlib.sha256("\x1f".join([p if type(p) is str else str(p) for p in parts]).encode()).hexdigest()
    # Shape it as an RFC 4122 version-8 (custom) UUID string.
    return f"{h[:8]}-{h[8:12]}-8{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def event_id(account_id: str, contact_id: str, causation_id: str, version: int) -> str:
    """The event at aggregate `version`, decided for a command: redeciding the same command from the same
    state (a retry after a crash) yields the same ids; the same command id decided again past the
    idempotency window, from a later state, yields new ones (the projector keeps every event by id)."""
    return stable_id("event", account_id, contact_id, causation_id, version)


def enrollment_id(account_id: str, contact_id: str, campaign_id: str, sequence: int) -> str:
    """Re-enrollment after a finished one gets the next sequence number, hence a new id."""
    return stable_id("enrollment", account_id, contact_id, campaign_id, sequence)


def message_id(enrollment: str, step_index: int, attempt: int) -> str:
    """Per (enrollment, step, attempt): the dispatcher's ledger key and Message-ID local part."""
    return "es-" + stable_id("message", enrollment, step_index, attempt).replace("-", "")
